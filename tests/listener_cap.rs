//! A worker cannot make the primary hold more than its cap of listeners: a worker calling
//! `listen(0)` in a loop gets errors past the cap, the primary's listeners (and so its
//! descriptors) stay bounded, and a listener the worker closes frees its place.

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::rc::Rc;

use cluster_util::{primary, run, worker};
use forkloop::primary::{DEFAULT_MAX_LISTENERS_PER_WORKER, Event};
use forkloop::rt::EventLoop;
use forkloop::worker::{Server, Worker};

/// Listen requests each worker makes, all at once (the flood made 12 000; a worker
/// picks each pending listen's index by a linear search, so that many take long in a
/// debug build, and 1000 already make the cap matter 15 times over).
const LISTENS: u32 = 1000;
const WORKERS: usize = 2;

/// Listens on port 0 [`LISTENS`] times; reports `result OK REFUSED OTHER`, then closes
/// one listener and listens once more, reporting `relisten ok` or `relisten err ...`.
fn flood(lp: &mut EventLoop, w: &Worker) {
    let counts = Rc::new(RefCell::new((0u32, 0u32, 0u32)));
    let servers: Rc<RefCell<Vec<Server>>> = Rc::default();
    let reported = Rc::new(Cell::new(false));
    for _ in 0..LISTENS {
        let s = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c| c.destroy(lp));
        servers.borrow_mut().push(s.clone());
        let after = {
            let (w, counts, servers, reported) =
                (w.clone(), counts.clone(), servers.clone(), reported.clone());
            move |lp: &mut EventLoop| {
                let (ok, refused, other) = *counts.borrow();
                if ok + refused + other < LISTENS || reported.replace(true) {
                    return;
                }
                let _ = w.send(lp, format!("result {ok} {refused} {other}").as_bytes());
                // Close a listener that listens; its place is free again.
                let first = servers.borrow().iter().find(|s| s.is_listening()).cloned();
                let w = w.clone();
                if let Some(s) = first {
                    s.close(lp, move |lp| {
                        let again = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c| {
                            c.destroy(lp)
                        });
                        let w2 = w.clone();
                        again.on_listening(lp, move |lp, _| {
                            let _ = w2.send(lp, b"relisten ok");
                        });
                        let w3 = w.clone();
                        again.on_error(move |lp, _, e| {
                            let _ = w3.send(lp, format!("relisten err {e}").as_bytes());
                        });
                    });
                }
            }
        };
        let (c, a) = (counts.clone(), after.clone());
        s.on_listening(lp, move |lp, _| {
            c.borrow_mut().0 += 1;
            a(lp);
        });
        let c = counts.clone();
        s.on_error(move |lp, _, e| {
            if e.kind() == ErrorKind::QuotaExceeded {
                c.borrow_mut().1 += 1;
            } else {
                eprintln!("unexpected listen error: {e}");
                c.borrow_mut().2 += 1;
            }
            after(lp);
        });
    }
}

#[test]
fn a_worker_listening_in_a_loop_is_refused_past_its_cap() {
    worker(flood);
    let (mut lp, p) = primary("a_worker_listening_in_a_loop_is_refused_past_its_cap");
    let results = Rc::new(RefCell::new(BTreeMap::new()));
    let relisten = Rc::new(RefCell::new(BTreeMap::new()));
    let at_cap = Rc::new(Cell::new(0));
    let (r, rl, cap) = (results.clone(), relisten.clone(), at_cap.clone());
    p.on(move |lp, p, ev| {
        let Event::Message { worker, data, .. } = ev else {
            return;
        };
        let text = String::from_utf8_lossy(data).into_owned();
        if let Some(rest) = text.strip_prefix("result ") {
            r.borrow_mut().insert(*worker, rest.to_string());
            if r.borrow().len() == WORKERS {
                cap.set(p.listener_count());
            }
        } else if let Some(rest) = text.strip_prefix("relisten ") {
            rl.borrow_mut().insert(*worker, rest.to_string());
            if rl.borrow().len() == WORKERS {
                p.disconnect(lp, |_, _| {});
            }
        }
    });
    for _ in 0..WORKERS {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    let cap = DEFAULT_MAX_LISTENERS_PER_WORKER;
    let want = format!("{cap} {} 0", LISTENS - cap);
    for (w, got) in results.borrow().iter() {
        assert_eq!(got, &want, "worker {w}: listening, refused, other");
    }
    assert_eq!(results.borrow().len(), WORKERS);
    assert!(
        at_cap.get() <= cap as usize,
        "the primary holds at most the cap of listeners (the n-th listen(0) of every \
         worker shares one): {}",
        at_cap.get()
    );
    for (w, got) in relisten.borrow().iter() {
        assert_eq!(got, "ok", "worker {w}: a closed listener frees its place");
    }
}
