//! Typed user messages through serde (JSON), behind the `serde` feature.
#![cfg(feature = "serde")]

mod util;

use forkloop::ipc::{Channel, ChannelConfig, Message};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Greeting {
    from: u32,
    text: String,
    tags: Vec<String>,
}

#[test]
fn typed_user_message_round_trips_as_json() {
    let (mut a, mut b) = Channel::pair(ChannelConfig::default()).unwrap();
    let hello = Greeting {
        from: 3,
        text: "hi".into(),
        tags: vec!["a".into(), "b".into()],
    };
    a.send_msg(&Message::user_json(&hello).unwrap(), Vec::new())
        .unwrap();
    let got = util::pump(&mut a, &mut b).unwrap();
    let msg = Message::decode(got[0].kind, &got[0].payload, 0).unwrap();
    let back: Greeting = msg.json().unwrap().unwrap();
    assert_eq!(back, hello);
    // Bytes that are not a Greeting give a serde error, not a panic.
    let wrong = Message::User(b"{\"from\":\"x\"}".to_vec());
    assert!(wrong.json::<Greeting>().unwrap().is_err());
    assert!(Message::Online.json::<Greeting>().is_none());
}
