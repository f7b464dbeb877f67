//! Errors: typed, parsed with `FromStr`, and printed as a chain without repeats.

use forkloop::ipc::{ChannelError, Limits, LimitsError};
use forkloop::primary::{ParsePolicyError, Policy};

/// Every message of `e`'s chain, outermost first.
fn chain(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        out.push(s.to_string());
        next = s.source();
    }
    out
}

#[test]
fn policies_parse_from_their_names_and_print_back() {
    for p in [Policy::RoundRobin, Policy::Shared, Policy::ReusePort] {
        assert_eq!(p.to_string().parse::<Policy>(), Ok(p));
    }
    let err = "round-robin".parse::<Policy>().unwrap_err();
    assert_eq!(
        err,
        ParsePolicyError {
            given: "round-robin".into()
        }
    );
    assert!(err.to_string().contains("rr, none, reuseport"), "{err}");
}

#[test]
fn limits_out_of_range_are_typed() {
    let too_many = Limits {
        max_fds: 200,
        ..Limits::default()
    };
    assert_eq!(too_many.validate(), Err(LimitsError::MaxFds(200)));
    let too_big = Limits {
        max_payload: u32::MAX,
        ..Limits::default()
    };
    assert_eq!(too_big.validate(), Err(LimitsError::MaxPayload(u32::MAX)));
    assert_eq!(Limits::default().validate(), Ok(()));
}

#[test]
fn a_chain_prints_each_message_once() {
    let inner = std::io::Error::other("the disk is on fire");
    let outer = forkloop::Error::Channel(ChannelError::Io(inner));
    let all = chain(&outer).join(" / ");
    assert_eq!(
        all.matches("the disk is on fire").count(),
        1,
        "printed once in the chain: {all}"
    );
    assert!(outer.to_string().contains("the disk is on fire"), "{outer}");
}

#[cfg(feature = "serde")]
#[test]
fn json_errors_are_the_crates_own() {
    let msg = forkloop::ipc::Message::User(b"{not json".to_vec());
    let err: forkloop::error::JsonError = msg.json::<u32>().unwrap().unwrap_err();
    assert_eq!(err.position().0, 1);
    let as_crate: forkloop::Error = err.into();
    assert!(as_crate.to_string().starts_with("json: "), "{as_crate}");
}
