//! Typed messages on both sides, broadcast except the sender, and relays that cannot be
//! delivered reported to their sender.

mod cluster_util;

use cluster_util::*;
use forkloop::primary::Event;

#[test]
fn a_relay_to_a_missing_worker_is_reported_to_its_sender() {
    worker(|lp, w| {
        w.on_relay_failed(|lp, w, peer| {
            let _ = w.send(lp, format!("not delivered to {peer}").as_bytes());
        });
        w.relay(lp, 99, b"anyone there?").expect("queued");
    });
    let (mut lp, p) = primary("a_relay_to_a_missing_worker_is_reported_to_its_sender");
    let got = Log::default();
    let g = got.clone();
    p.on(move |lp, p, ev| {
        if let Event::Message { data, .. } = ev {
            g.push(String::from_utf8_lossy(data).into_owned());
            p.disconnect(lp, |_, _| {});
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(got.get(), ["not delivered to 99"]);
}

#[cfg(feature = "serde")]
#[test]
fn json_from_a_worker_is_passed_on_to_every_other_worker() {
    use serde_json::{Value, json};
    worker(|lp, w| {
        w.on_message(lp, |lp, w, msg| {
            let v: Value = msg.json().expect("json");
            let _ = w.send_json(lp, &json!({"worker": w.id(), "heard": v}));
        });
        if w.id() == 1 {
            // Wait for the other worker to be up before speaking.
            let w2 = w.clone();
            lp.set_timeout(200, move |lp| {
                let _ = w2.send_json(lp, &json!({"say": "hi"}));
            });
        }
    });
    let (mut lp, p) = primary("json_from_a_worker_is_passed_on_to_every_other_worker");
    let got = Log::default();
    let g = got.clone();
    p.on(move |lp, p, ev| {
        let Some(Ok(v)) = ev.json::<serde_json::Value>() else {
            return;
        };
        let Some(worker) = ev.worker() else {
            return;
        };
        if v.get("say").is_some() {
            let n = p.broadcast_json(lp, Some(worker), &v).expect("encodes");
            g.push(format!("passed on to {n}"));
        } else {
            g.push(v.to_string());
            let p2 = p.clone();
            // Give a wrongly addressed copy time to arrive before ending.
            lp.set_timeout(100, move |lp| p2.disconnect(lp, |_, _| {}));
        }
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(
        got.get(),
        ["passed on to 1", r#"{"heard":{"say":"hi"},"worker":2}"#],
        "only worker 2 heard it"
    );
}
