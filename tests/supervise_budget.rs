//! One restart budget for every cause: workers going down count like crashes, the breaker
//! trips, and after its cool-down it tries one worker (half-open) and closes once that
//! one is ready — the slot is never left empty for good.

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use cluster_util::{primary, run, worker};
use forkloop::primary::supervise::{RestartPolicy, Supervisor, SupervisorEvent, SupervisorOptions};

#[test]
fn going_down_trips_the_breaker_which_tries_again_after_its_cool_down() {
    worker(|lp, w| {
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c| c.destroy(lp));
        server.on_error(|_, _, e| panic!("listen failed: {e}"));
        w.on_message(lp, |lp, w, _| w.going_down(lp, "fatal error"));
    });
    let (mut lp, p) = primary("going_down_trips_the_breaker_which_tries_again_after_its_cool_down");
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            restart: RestartPolicy {
                base: Duration::from_millis(10),
                factor: 2.0,
                min_uptime: Duration::from_secs(5),
                breaker_max: 3,
                breaker_window: Duration::from_secs(30),
                breaker_cooldown: Duration::from_millis(300),
                ..RestartPolicy::default()
            },
            ..cluster_util::supervisor_options(1)
        },
    )
    .expect("supervisor");
    let log: Rc<RefCell<Vec<SupervisorEvent>>> = Rc::default();
    let (l, tripped) = (log.clone(), Rc::new(Cell::new(false)));
    let t = tripped.clone();
    sup.on(move |lp, s, ev| {
        l.borrow_mut().push(ev.clone());
        match ev {
            // Every new worker goes down as soon as it is ready, until the breaker trips.
            SupervisorEvent::Ready { worker, .. } if !t.get() => {
                let _ = s.primary().send(lp, *worker, b"go down");
            }
            SupervisorEvent::BreakerTripped { .. } => t.set(true),
            SupervisorEvent::BreakerClosed { .. } => s.shutdown(lp),
            _ => {}
        }
    });
    sup.start(&mut lp).expect("start");
    assert_eq!(run(&mut lp), 0);
    let log = log.borrow();
    let delays: Vec<Duration> = log
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [10, 20, 40].map(Duration::from_millis),
        "going down backs off like a crash: {log:?}"
    );
    let kinds: Vec<&str> = log
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::BreakerTripped { restarts: 4, .. } => Some("tripped"),
            SupervisorEvent::BreakerHalfOpen { .. } => Some("half-open"),
            SupervisorEvent::BreakerClosed { .. } => Some("closed"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["tripped", "half-open", "closed"], "{log:?}");
}

#[test]
fn a_reload_refills_tripped_slots_and_says_ok_only_when_they_serve() {
    // Workers crash at boot while the marker file exists.
    worker(|lp, w| {
        let marker = std::env::var("FORKLOOP_TEST_MARKER").expect("marker");
        if std::path::Path::new(&marker).exists() {
            std::process::exit(3);
        }
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c| c.destroy(lp));
        server.on_error(|_, _, e| panic!("listen failed: {e}"));
    });
    let marker = std::env::temp_dir().join(format!("forkloop-tripped-{}", std::process::id()));
    std::fs::write(&marker, b"crash").expect("marker");
    let (mut lp, p) = primary("a_reload_refills_tripped_slots_and_says_ok_only_when_they_serve");
    p.setup(
        &mut lp,
        forkloop::primary::Settings::default().env("FORKLOOP_TEST_MARKER", &marker),
    );
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            restart: RestartPolicy {
                base: Duration::from_millis(10),
                breaker_max: 1,
                // Far beyond the test: only the reload can refill the slots.
                breaker_cooldown: Duration::from_secs(600),
                ..RestartPolicy::default()
            },
            ..cluster_util::supervisor_options(2)
        },
    )
    .expect("supervisor");
    let results: Rc<RefCell<Vec<Result<(), forkloop::primary::supervise::ReloadError>>>> =
        Rc::default();
    let tripped = Rc::new(Cell::new(0));
    let (r, t, mk) = (results.clone(), tripped.clone(), marker.clone());
    sup.on(move |lp, s, ev| {
        if !matches!(ev, SupervisorEvent::BreakerTripped { .. }) {
            return;
        }
        t.set(t.get() + 1);
        if t.get() != 2 {
            return;
        }
        // Both slots are empty: a reload while workers still crash fails...
        assert_eq!(s.stats().len(), 0);
        let (r, s2, mk) = (r.clone(), s.clone(), mk.clone());
        s.reload(lp, move |lp, first| {
            r.borrow_mut().push(first);
            // ...and once they can start, it refills both slots and says Ok.
            std::fs::remove_file(&mk).expect("remove marker");
            let (r, s3) = (r.clone(), s2.clone());
            s2.reload(lp, move |lp, second| {
                r.borrow_mut().push(second);
                assert_eq!(s3.stats().len(), 2, "both slots serve again");
                s3.shutdown(lp);
            });
        });
    });
    sup.start(&mut lp).expect("start");
    let code = run(&mut lp);
    let _ = std::fs::remove_file(&marker);
    assert_eq!(code, 0);
    let results = results.borrow();
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0].is_err(), "no worker came up: {results:?}");
    assert_eq!(results[1], Ok(()));
}
