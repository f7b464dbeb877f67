//! The cluster's lifecycle and messaging, re-expressing the [core] tests of Node's
//! `test/parallel/test-cluster-*.js`. Each test's name is the Node test
//! it mirrors. The test binary re-executes itself as the workers (see `cluster_util`).

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use cluster_util::{ChildGuard, Log, PidGuard, args_for, name, primary, run, wait_gone, worker};
use forkloop::cluster::{CHANNEL_FD_ENV, WORKER_ID_ENV, WorkerState};
use forkloop::ipc::{Endpoint, SendFd};
use forkloop::primary::{Event, Primary, Settings};
use forkloop::rt::EventLoop;
use forkloop::worker::{Server, Worker};
use nix::sys::signal::Signal;

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Records "event state" for every event.
fn record(p: &Primary, log: &Log) {
    let log = log.clone();
    p.on(move |_, p, ev| {
        let state = ev.worker().and_then(|w| p.worker(w)).map(|i| i.state);
        log.push(format!("{} {state:?}", name(ev)));
    });
}

#[test]
fn basic() {
    worker(|lp, w| {
        // The variables stay (the environment is never edited), the role is decided once.
        let env_kept =
            std::env::var_os(WORKER_ID_ENV).is_some() && std::env::var_os(CHANNEL_FD_ENV).is_some();
        let role_kept = forkloop::role() == forkloop::Role::Worker(w.id());
        w.send(
            lp,
            if env_kept && role_kept {
                b"role-kept"
            } else {
                b"role-lost"
            },
        )
        .unwrap();
        let server = Server::bind(lp, local(), |lp, _, c| c.destroy(lp)).unwrap();
        server.announce(lp, w, 0);
        lp.set_timeout(20, |lp| lp.exit(3));
    });
    let (mut lp, p) = primary("basic");
    let log = Log::default();
    record(&p, &log);
    let port = Rc::new(Cell::new(0));
    let pt = port.clone();
    p.on(move |_, _, ev| {
        if let Event::Listening {
            address: Endpoint::Tcp(a),
            ..
        } = ev
        {
            pt.set(a.port());
        }
    });
    assert_eq!(p.fork(&mut lp).unwrap(), 1, "the first id is 1");
    assert_eq!(p.worker(1).unwrap().state, WorkerState::None);
    run(&mut lp);
    assert_eq!(
        log.get(),
        [
            "setup None",
            "setup None",
            "fork 1 Some(None)",
            "online 1 Some(Online)",
            "message 1 role-kept Some(Online)",
            "listening 1 Some(Listening)",
            "disconnect 1 Some(Disconnected)",
            "exit 1 Some(3) None Some(Dead)",
        ]
    );
    assert_ne!(port.get(), 0, "listening carries the real port");
    assert!(p.worker(1).is_none() && p.workers().is_empty());
}

#[test]
fn worker_exit() {
    worker(|lp, w| {
        let server = Server::bind(lp, local(), |lp, _, c| c.destroy(lp)).unwrap();
        server.announce(lp, w, 0);
        lp.set_timeout(10, |_| std::process::exit(42));
    });
    let (mut lp, p) = primary("worker_exit");
    let log = Log::default();
    let id = p.fork(&mut lp).unwrap();
    let l = log.clone();
    p.on_worker(id, move |_, p, ev| {
        let info = ev.worker().and_then(|w| p.worker(w));
        match ev {
            Event::Disconnect { .. } => {
                let i = info.unwrap();
                l.push(format!(
                    "w-disconnect {:?} {:?}",
                    i.state, i.exited_after_disconnect
                ));
            }
            Event::Exit { status, .. } => {
                l.push(format!("w-exit {:?} {:?}", status.code, status.signal))
            }
            _ => {}
        }
    });
    let l = log.clone();
    p.on(move |_, _, ev| match ev {
        Event::Disconnect { .. } => l.push("c-disconnect"),
        Event::Exit { status, .. } => l.push(format!("c-exit {:?}", status.code)),
        _ => {}
    });
    run(&mut lp);
    assert_eq!(
        log.get(),
        [
            "w-disconnect Disconnected Some(false)",
            "c-disconnect",
            "w-exit Some(42) None",
            "c-exit Some(42)",
        ]
    );
}

#[test]
fn worker_death() {
    worker(|_, _| std::process::exit(42));
    let (mut lp, p) = primary("worker_death");
    let log = Log::default();
    let id = p.fork(&mut lp).unwrap();
    let l = log.clone();
    p.on_worker(id, move |_, _, ev| {
        if let Event::Exit { status, .. } = ev {
            l.push(format!("worker {:?} {:?}", status.code, status.signal));
        }
    });
    let l = log.clone();
    p.on(move |_, _, ev| {
        if let Event::Exit { worker, status } = ev {
            l.push(format!(
                "cluster {worker} {:?} {:?}",
                status.code, status.signal
            ));
        }
    });
    run(&mut lp);
    assert_eq!(
        log.get(),
        ["worker Some(42) None", "cluster 1 Some(42) None"]
    );
}

#[test]
fn worker_kill_signal() {
    worker(|_, _| {}); // idle: kept alive by its channel
    let (mut lp, p) = primary("worker_kill_signal");
    let log = Log::default();
    let l = log.clone();
    p.on(move |_, p, ev| match ev {
        Event::Online { worker } => p.kill(*worker, Signal::SIGKILL as i32).unwrap(),
        Event::Disconnect { worker } => {
            let i = p.worker(*worker).unwrap();
            l.push(format!(
                "disconnect {:?} {:?}",
                i.state, i.exited_after_disconnect
            ));
        }
        Event::Exit { status, .. } => l.push(format!(
            "exit {:?} {:?} listed={}",
            status.code,
            status.signal,
            p.workers().len()
        )),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(
        log.get(),
        [
            "disconnect Disconnected Some(false)",
            "exit None Some(9) listed=0",
        ]
    );
}

#[test]
fn worker_disconnect() {
    worker(|lp, w| {
        let server = Server::bind(lp, local(), |lp, _, c| c.destroy(lp)).unwrap();
        server.announce(lp, w, 0);
        w.on_disconnect(|lp, _| lp.exit(42));
    });
    let (mut lp, p) = primary("worker_disconnect");
    let log = Log::default();
    let l = log.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Listening { worker, .. } => {
            assert!(p.disconnect_worker(lp, *worker));
            let i = p.worker(*worker).unwrap();
            l.push(format!(
                "after-call {:?} connected={} listed={}",
                i.exited_after_disconnect,
                i.connected,
                p.workers().contains(worker)
            ));
        }
        Event::Disconnect { worker } => {
            let i = p.worker(*worker).unwrap();
            l.push(format!(
                "disconnect {:?} {:?}",
                i.state, i.exited_after_disconnect
            ));
        }
        Event::Exit { status, .. } => l.push(format!("exit {:?}", status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(
        log.get(),
        [
            "after-call Some(true) connected=true listed=false",
            "disconnect Disconnected Some(true)",
            "exit Some(42)",
        ]
    );
}

#[test]
fn worker_forced_exit() {
    worker(|lp, _| {
        // A worker with its own business: it exits 42 when its timer fires.
        lp.set_timeout(300, |lp| lp.exit(42));
    });
    let (mut lp, p) = primary("worker_forced_exit");
    let exits = Rc::new(RefCell::new(Vec::new()));
    let e = exits.clone();
    p.on(move |lp, p, ev| match ev {
        // Worker 1: graceful disconnect lets it finish on its own terms.
        Event::Online { worker: 1 } => {
            p.disconnect_worker(lp, 1);
        }
        // Worker 2: the primary closes the channel: forced exit 0 at once.
        Event::Online { worker: 2 } => {
            p.close_channel(lp, 2);
        }
        Event::Exit { worker, status } => e.borrow_mut().push((*worker, status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let mut got = exits.borrow().clone();
    got.sort();
    assert_eq!(got, [(1, Some(42)), (2, Some(0))]);
}

#[test]
fn kill_disconnect() {
    worker(|lp, w| {
        if w.id() == 1 {
            w.disconnect(lp);
        } else {
            w.kill(lp);
        }
    });
    let (mut lp, p) = primary("kill_disconnect");
    let log = Log::default();
    let l = log.clone();
    p.on(move |_, p, ev| match ev {
        Event::Disconnect { worker } => l.push(format!(
            "disconnect {worker} {:?}",
            p.worker(*worker).unwrap().exited_after_disconnect
        )),
        Event::Exit { worker, status } => l.push(format!(
            "exit {worker} {:?} {:?}",
            p.worker(*worker).unwrap().exited_after_disconnect,
            status.code
        )),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let mut got = log.get();
    got.sort();
    assert_eq!(
        got,
        [
            "disconnect 1 Some(true)",
            "disconnect 2 Some(true)",
            "exit 1 Some(true) Some(0)",
            "exit 2 Some(true) Some(0)",
        ]
    );
}

#[test]
fn worker_isdead() {
    worker(|lp, w| {
        // In the worker the process is obviously alive; leave at once.
        w.disconnect(lp);
    });
    let (mut lp, p) = primary("worker_isdead");
    let id = p.fork(&mut lp).unwrap();
    assert!(
        !p.worker(id).unwrap().is_dead(),
        "not dead right after fork"
    );
    let seen = Rc::new(Cell::new(false));
    let s = seen.clone();
    p.on(move |_, p, ev| {
        if let Event::Exit { worker, .. } = ev {
            s.set(p.worker(*worker).unwrap().is_dead());
        }
    });
    run(&mut lp);
    assert!(seen.get(), "dead at exit");
}

#[test]
fn worker_isconnected() {
    worker(|lp, w| {
        let msg = format!("connected={}", w.is_connected());
        w.send(lp, msg.as_bytes()).unwrap();
        w.on_disconnect(|lp, w| lp.exit(if w.is_connected() { 1 } else { 0 }));
        w.disconnect(lp);
    });
    let (mut lp, p) = primary("worker_isconnected");
    let log = Log::default();
    let id = p.fork(&mut lp).unwrap();
    assert!(
        p.worker(id).unwrap().is_connected(),
        "connected right after fork"
    );
    let l = log.clone();
    p.on(move |_, p, ev| match ev {
        Event::Message { data, .. } => l.push(String::from_utf8_lossy(data)),
        Event::Disconnect { worker } => l.push(format!(
            "disconnect connected={}",
            p.worker(*worker).unwrap().is_connected()
        )),
        Event::Exit { status, .. } => l.push(format!("exit {:?}", status.code)),
        _ => {}
    });
    run(&mut lp);
    assert_eq!(
        log.get(),
        [
            "connected=true",
            "disconnect connected=false",
            "exit Some(0)"
        ]
    );
}

#[test]
fn concurrent_disconnect() {
    worker(|lp, w| {
        if w.id() % 2 == 0 {
            w.disconnect(lp);
        } else {
            w.kill(lp);
        }
    });
    let (mut lp, p) = primary("concurrent_disconnect");
    let exits = Rc::new(RefCell::new(Vec::new()));
    let e = exits.clone();
    p.on(move |_, _, ev| {
        if let Event::Exit { status, .. } = ev {
            e.borrow_mut().push((status.code, status.signal));
        }
    });
    let n = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(4);
    for _ in 0..n {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    assert_eq!(*exits.borrow(), vec![(Some(0), None); n]);
}

#[test]
fn disconnect_idle_worker() {
    worker(|_, _| {});
    let (mut lp, p) = primary("disconnect_idle_worker");
    let online = Rc::new(Cell::new(0));
    let done = Rc::new(Cell::new(0));
    let (o, d) = (online.clone(), done.clone());
    p.on(move |lp, p, ev| {
        if let Event::Online { .. } = ev {
            o.set(o.get() + 1);
            if o.get() == 2 {
                let d = d.clone();
                p.disconnect(lp, move |_, p| {
                    assert!(p.workers().is_empty());
                    assert!(p.worker(1).is_none() && p.worker(2).is_none(), "both gone");
                    d.set(d.get() + 1);
                });
            }
        }
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(done.get(), 1, "callback once, after all workers");
}

#[test]
fn disconnect_with_no_workers_is_async() {
    let mut lp = EventLoop::new().unwrap();
    let p = Primary::new(&mut lp).unwrap();
    let called = Rc::new(Cell::new(false));
    let c = called.clone();
    p.disconnect(&mut lp, move |_, _| c.set(true));
    assert!(!called.get(), "not synchronous");
    run(&mut lp);
    assert!(called.get());
}

#[test]
fn disconnect_exitedafterdisconnect_race() {
    worker(|lp, w| {
        w.disconnect(lp);
        // The channel stays open until the primary acknowledges.
        let w2 = w.clone();
        lp.next_tick(move |lp| {
            let msg = format!("next-tick connected={}", w2.is_connected());
            w2.send(lp, msg.as_bytes()).unwrap();
        });
    });
    let (mut lp, p) = primary("disconnect_exitedafterdisconnect_race");
    let log = Log::default();
    let l = log.clone();
    p.on(move |_, p, ev| match ev {
        Event::Message { data, .. } => l.push(String::from_utf8_lossy(data)),
        Event::Disconnect { worker } => l.push(format!(
            "disconnect {:?}",
            p.worker(*worker).unwrap().exited_after_disconnect
        )),
        Event::Exit { status, .. } => l.push(format!("exit {:?}", status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(
        log.get(),
        [
            "next-tick connected=true",
            "disconnect Some(true)",
            "exit Some(0)"
        ]
    );
}

#[test]
fn fork_env() {
    worker(|lp, w| {
        w.on_message(lp, |lp, w, m| {
            let reply = format!(
                "{} {} {}",
                String::from_utf8_lossy(&m.data),
                std::env::var("FORKLOOP_TEST_A").unwrap_or_default(),
                std::env::var("FORKLOOP_TEST_B").unwrap_or_default()
            );
            w.send(lp, reply.as_bytes()).unwrap();
            w.disconnect(lp);
        });
    });
    let (mut lp, p) = primary("fork_env");
    p.setup(
        &mut lp,
        Settings::default()
            .env("FORKLOOP_TEST_A", "from-settings")
            .env("FORKLOOP_TEST_B", "from-settings"),
    );
    let got = Rc::new(RefCell::new(String::new()));
    let g = got.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Online { worker } => p.send(lp, *worker, b"hello").unwrap(),
        Event::Message { data, .. } => *g.borrow_mut() = String::from_utf8_lossy(data).into(),
        _ => {}
    });
    p.fork_with_env(&mut lp, [("FORKLOOP_TEST_A", "from-fork")])
        .unwrap();
    run(&mut lp);
    assert_eq!(*got.borrow(), "hello from-fork from-settings");
}

#[cfg(target_os = "linux")]
#[test]
fn the_primary_yields_to_its_workers_which_run_in_the_normal_class() {
    worker(|lp, w| {
        let policy = forkloop::sys::sched_policy().unwrap();
        w.send(lp, format!("policy {policy}").as_bytes()).unwrap();
        w.disconnect(lp);
    });
    assert_eq!(
        forkloop::sys::sched_policy().unwrap(),
        0,
        "test threads start in the normal class"
    );
    let got = Rc::new(RefCell::new(String::new()));
    {
        let (mut lp, p) =
            primary("the_primary_yields_to_its_workers_which_run_in_the_normal_class");
        assert!(p.yields_to_workers());
        assert_eq!(
            forkloop::sys::sched_policy().unwrap(),
            3,
            "the primary's thread is in the batch class"
        );
        let g = got.clone();
        p.on(move |_, _, ev| {
            if let Event::Message { data, .. } = ev {
                *g.borrow_mut() = String::from_utf8_lossy(data).into();
            }
        });
        p.fork(&mut lp).unwrap();
        run(&mut lp);
    }
    assert_eq!(
        *got.borrow(),
        "policy 0",
        "the worker runs in the normal class"
    );
    assert_eq!(
        forkloop::sys::sched_policy().unwrap(),
        0,
        "back in the normal class once the primary is gone"
    );

    let mut lp = EventLoop::new().unwrap();
    let opts = forkloop::primary::PrimaryOptions {
        yield_to_workers: false,
        ..forkloop::primary::PrimaryOptions::default()
    };
    let p = Primary::with_options(&mut lp, opts).unwrap();
    assert!(!p.yields_to_workers());
    assert_eq!(forkloop::sys::sched_policy().unwrap(), 0, "opted out");
}

#[test]
fn setup_primary_cumulative() {
    let mut lp = EventLoop::new().unwrap();
    let p = Primary::new(&mut lp).unwrap();
    assert_eq!(p.settings(), Settings::default(), "settings start empty");
    let setups = Rc::new(RefCell::new(Vec::new()));
    let s = setups.clone();
    p.on(move |_, _, ev| {
        if let Event::Setup(settings) = ev {
            s.borrow_mut().push(settings.clone());
        }
    });
    p.setup(&mut lp, Settings::default().args(["one"]));
    let after_first = p.settings();
    assert_eq!(after_first.args, Some(vec!["one".into()]));
    assert_eq!(
        after_first.silent,
        Some(false),
        "defaults fill unset fields"
    );
    assert_eq!(after_first.exec, Some(std::env::current_exe().unwrap()));
    p.setup(&mut lp, Settings::default().exec("/bin/true").silent(true));
    let after_second = p.settings();
    assert_eq!(
        after_second.args,
        Some(vec!["one".into()]),
        "earlier fields kept"
    );
    assert_eq!(after_second.exec, Some("/bin/true".into()));
    assert_eq!(after_second.silent, Some(true));
    assert!(
        setups.borrow().is_empty(),
        "setup is emitted asynchronously"
    );
    run(&mut lp);
    let seen = setups.borrow();
    assert_eq!(seen.len(), 2, "one setup event per call");
    assert_eq!(seen[0].exec, after_first.exec);
    assert_eq!(seen[1].exec, Some("/bin/true".into()));
}

#[test]
fn setup_primary() {
    // args reach the worker (silent output is covered by silent_output_is_line_prefixed).
    worker(|lp, w| {
        let has = std::env::args().any(|a| a == "--custom-arg");
        w.send(lp, if has { b"has-arg" } else { b"no-arg" })
            .unwrap();
        w.disconnect(lp);
    });
    let (mut lp, p) = primary("setup_primary");
    let mut args = args_for("setup_primary");
    args.push("--custom-arg".into());
    // libtest would reject the unknown flag; `--` passes it through as a filter after
    // the test name, which matches nothing else.
    args.insert(args.len() - 1, "--".into());
    p.setup(&mut lp, Settings::default().args(args));
    let got = Rc::new(RefCell::new(String::new()));
    let g = got.clone();
    p.on(move |_, _, ev| {
        if let Event::Message { data, .. } = ev {
            *g.borrow_mut() = String::from_utf8_lossy(data).into();
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(*got.borrow(), "has-arg");
}

#[test]
fn message() {
    worker(|lp, w| {
        let hi = format!("hi from {}", w.id());
        w.send(lp, hi.as_bytes()).unwrap();
        w.on_message(lp, |lp, w, m| {
            let reply = format!("got {}", String::from_utf8_lossy(&m.data));
            w.send(lp, reply.as_bytes()).unwrap();
            w.disconnect(lp);
        });
    });
    let (mut lp, p) = primary("message");
    let log = Log::default();
    let l = log.clone();
    p.on(move |lp, p, ev| {
        if let Event::Message { worker, data, .. } = ev {
            let text = String::from_utf8_lossy(data).into_owned();
            l.push(format!("{worker}: {text}"));
            if text.starts_with("hi") {
                p.send(lp, *worker, format!("hello {worker}").as_bytes())
                    .unwrap();
            }
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(log.get(), ["1: hi from 1", "1: got hello 1"]);
}

/// Messages a worker sends in one loop iteration after the first are held back and
/// written together before the loop polls: none waits while the loop sleeps.
#[test]
fn messages_sent_together_arrive_while_the_worker_sleeps() {
    worker(|lp, w| {
        let w = w.clone();
        // From a timer, then nothing else happens until the primary acts: the second and
        // third messages must not wait for another event in this worker.
        lp.set_timeout(1, move |lp| {
            for m in ["one", "two", "three"] {
                w.send(lp, m.as_bytes()).unwrap();
            }
        });
    });
    let (mut lp, p) = primary("messages_sent_together_arrive_while_the_worker_sleeps");
    let log = Log::default();
    let l = log.clone();
    p.on(move |lp, p, ev| {
        if let Event::Message { worker, data, .. } = ev {
            l.push(String::from_utf8_lossy(data));
            if data == b"three" {
                p.disconnect_worker(lp, *worker);
            }
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(log.get(), ["one", "two", "three"]);
}

/// Held-back messages are written when the worker's loop exits: a callback that sends
/// many and then calls `exit` loses none.
#[test]
fn messages_sent_before_exit_are_not_lost() {
    const N: usize = 2000;
    worker(|lp, w| {
        let w = w.clone();
        lp.set_timeout(1, move |lp| {
            for i in 0..N {
                w.send(lp, i.to_string().as_bytes()).unwrap();
            }
            lp.exit(7);
        });
    });
    let (mut lp, p) = primary("messages_sent_before_exit_are_not_lost");
    let got = Rc::new(RefCell::new(Vec::new()));
    let code = Rc::new(Cell::new(None));
    let (g, c) = (got.clone(), code.clone());
    p.on(move |_, _, ev| match ev {
        Event::Message { data, .. } => g
            .borrow_mut()
            .push(String::from_utf8_lossy(data).into_owned()),
        Event::Exit { status, .. } => c.set(Some(status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(*got.borrow(), want, "every message, in order");
    assert_eq!(code.get(), Some(Some(7)));
}

#[test]
fn invalid_message() {
    // Bytes that look like a control frame, sent as a user message, stay user bytes.
    worker(|lp, w| {
        w.on_message(lp, |lp, w, m| {
            let reply = format!("user {} bytes", m.data.len());
            w.send(lp, reply.as_bytes()).unwrap();
        });
    });
    let (mut lp, p) = primary("invalid_message");
    let log = Log::default();
    let l = log.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Online { worker } => {
            // A well-formed Disconnect frame, as payload.
            let fake = [1u8, 8, 0, 0, 0, 0, 0, 0];
            p.send(lp, *worker, &fake).unwrap();
        }
        Event::Message { worker, data, .. } => {
            l.push(String::from_utf8_lossy(data));
            p.disconnect_worker(lp, *worker);
        }
        Event::Exit { status, .. } => l.push(format!("exit {:?}", status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(log.get(), ["user 8 bytes", "exit Some(0)"]);
}

#[test]
fn garbage_from_a_worker_disconnects_only_that_worker() {
    if forkloop::role() != forkloop::Role::Primary {
        // Worker 1 writes garbage on its raw channel; worker 2 behaves.
        if std::env::args().any(|a| a == "--garbage") {
            let fd = forkloop::cluster::take_channel().unwrap();
            let mut s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(false).unwrap();
            s.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5])
                .unwrap();
            let mut b = [0u8; 1];
            let _ = s.read(&mut b); // until the primary hangs up
            std::process::exit(7);
        }
    }
    worker(|lp, w| {
        w.on_message(lp, |lp, w, m| {
            let reply = [b"echo ".as_slice(), &m.data].concat();
            w.send(lp, &reply).unwrap();
            w.disconnect(lp);
        });
    });
    let (mut lp, p) = primary("garbage_from_a_worker_disconnects_only_that_worker");
    let log = Log::default();
    let l = log.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Error { worker, .. } => l.push(format!("error {worker}")),
        // The other worker is unaffected.
        Event::Online { worker: 2 } => p.send(lp, 2, b"still there?").unwrap(),
        Event::Message { worker, data, .. } => {
            l.push(format!("{worker}: {}", String::from_utf8_lossy(data)))
        }
        Event::Exit { worker, status } => l.push(format!("exit {worker} {:?}", status.code)),
        _ => {}
    });
    let mut args = args_for("garbage_from_a_worker_disconnects_only_that_worker");
    args.insert(args.len() - 1, "--".into());
    args.push("--garbage".into());
    p.setup(&mut lp, Settings::default().args(args));
    let bad = p.fork(&mut lp).unwrap();
    assert_eq!(bad, 1);
    p.setup(
        &mut lp,
        Settings::default().args(args_for(
            "garbage_from_a_worker_disconnects_only_that_worker",
        )),
    );
    // Fork the second one only once the first has been dealt with.
    let waiting = Rc::new(Cell::new(true));
    let wt = waiting.clone();
    p.on(move |lp, p, ev| {
        if let Event::Disconnect { worker: 1 } = ev
            && wt.replace(false)
        {
            p.fork(lp).unwrap();
        }
    });
    run(&mut lp);
    let got = log.get();
    assert_eq!(got[0], "error 1");
    assert!(got.contains(&"exit 1 Some(7)".to_string()), "{got:?}");
    assert!(got.contains(&"2: echo still there?".to_string()), "{got:?}");
    assert!(got.contains(&"exit 2 Some(0)".to_string()), "{got:?}");
}

#[test]
fn send_deadlock() {
    const N: usize = 64;
    worker(|lp, w| {
        // Send N sockets to the primary while it sends N to us.
        for i in 0..N {
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            w.send_with_fds(lp, &[i as u8], vec![OwnedFd::from(a).into()])
                .unwrap();
        }
        let got = Rc::new(Cell::new(0));
        w.on_message(lp, move |lp, w, m| {
            assert_eq!(m.fds.len(), 1);
            got.set(got.get() + 1);
            if got.get() == N {
                w.disconnect(lp);
            }
        });
    });
    let (mut lp, p) = primary("send_deadlock");
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Online { worker } => {
            for i in 0..N {
                let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
                p.send_with_fds(lp, *worker, &[i as u8], vec![OwnedFd::from(a).into()])
                    .unwrap();
            }
        }
        Event::Message { data, fds, .. } => {
            assert_eq!(fds.len(), 1);
            assert_eq!(data[0] as usize, g.get(), "in order");
            g.set(g.get() + 1);
        }
        Event::Exit { status, .. } => assert_eq!(status.code, Some(0)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(got.get(), N);
}

#[test]
fn send_handle_large_payload() {
    fn big() -> Vec<u8> {
        (0..800_000u32).map(|i| (i % 251) as u8).collect()
    }
    worker(|lp, w| {
        w.on_message(lp, |lp, w, m| {
            assert_eq!(m.data, big(), "800 KB arrive whole");
            let fd = m.fds.pop().expect("the fd came with the message");
            w.send_with_fds(lp, &big(), vec![fd.into()]).unwrap();
            w.disconnect(lp);
        });
    });
    let (mut lp, p) = primary("send_handle_large_payload");
    let (mut r, wfd) = std::io::pipe().unwrap();
    let wfd = RefCell::new(Some(OwnedFd::from(wfd)));
    let back = Rc::new(RefCell::new(None));
    let b = back.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Online { worker } => {
            let fd: SendFd = wfd.borrow_mut().take().unwrap().into();
            p.send_with_fds(lp, *worker, &big(), vec![fd]).unwrap();
        }
        Event::Message { data, fds, .. } => {
            assert_eq!(*data, big());
            *b.borrow_mut() = fds.pop();
        }
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let fd = back
        .borrow_mut()
        .take()
        .expect("fd came back with the payload");
    std::fs::File::from(fd).write_all(b"round trip").unwrap();
    let mut got = [0u8; 10];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"round trip");
}

/// A worker serving one connection; the primary disconnects it while the client is still
/// connected. It must stay up until the connection ends (and say when its server closes).
fn serving_worker(lp: &mut EventLoop, w: &Worker) {
    let w2 = w.clone();
    let server = Server::bind(lp, local(), move |lp, _, conn| {
        let _ = w2.send(lp, b"accepted");
        conn.on_data(lp, |_, _, _| {}); // read, so the peer's hang-up is seen
        conn.on_end(lp, |lp, c| c.destroy(lp));
    })
    .unwrap();
    let w3 = w.clone();
    let s2 = server.clone();
    // Report the server's close (it must come before the channel closes).
    w.track_server(None, move |lp, closed| {
        s2.close(lp, move |lp| {
            let _ = w3.send(lp, b"server closed");
            closed.done(lp);
        })
    });
    let _ = w.notify_listening(lp, 0, Endpoint::Tcp(server.address().unwrap()));
}

fn disconnect_while_connected(test: &str) -> Vec<String> {
    let (mut lp, p) = primary(test);
    let log = Log::default();
    let client: Rc<RefCell<Option<std::net::TcpStream>>> = Rc::default();
    let (l, c) = (log.clone(), client.clone());
    p.on(move |lp, p, ev| match ev {
        Event::Listening {
            worker,
            address: Endpoint::Tcp(addr),
        } => {
            *c.borrow_mut() = Some(std::net::TcpStream::connect(*addr).unwrap());
            let _ = worker;
        }
        Event::Message { worker, data, .. } => {
            let text = String::from_utf8_lossy(data).into_owned();
            l.push(text.clone());
            if text == "accepted" {
                p.disconnect_worker(lp, *worker);
                let (l, c, p) = (l.clone(), c.clone(), p.clone());
                let w = *worker;
                lp.set_timeout(300, move |_| {
                    let alive = !p.worker(w).unwrap().is_dead();
                    l.push(format!("alive with a connection: {alive}"));
                    c.borrow_mut().take(); // the client hangs up
                });
            }
        }
        Event::Disconnect { .. } => l.push("disconnect"),
        Event::Exit { status, .. } => l.push(format!("exit {:?}", status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    log.get()
}

#[test]
fn worker_no_exit() {
    worker(serving_worker);
    let got = disconnect_while_connected("worker_no_exit");
    assert_eq!(
        got,
        [
            "accepted",
            "alive with a connection: true",
            "server closed",
            "disconnect",
            "exit Some(0)"
        ]
    );
}

#[test]
fn worker_wait_server_close() {
    worker(serving_worker);
    let got = disconnect_while_connected("worker_wait_server_close");
    let closed = got.iter().position(|s| s == "server closed").unwrap();
    let disconnect = got.iter().position(|s| s == "disconnect").unwrap();
    assert!(
        closed < disconnect,
        "server closes before the channel: {got:?}"
    );
}

/// Runs this test binary as a primary of its own (env `FORKLOOP_TEST_SUB`), returning its
/// stdout once it exits.
fn sub_primary(test: &str, mode: &str) -> (std::process::ExitStatus, String) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(args_for(test))
        .env("FORKLOOP_TEST_SUB", mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let mut out = String::new();
    guard
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = guard.0.wait().unwrap();
    (status, out)
}

fn sub_mode() -> Option<String> {
    std::env::var("FORKLOOP_TEST_SUB").ok()
}

/// The sub-primary for the primary-death tests: forks one idle worker, prints its pid,
/// then dies as `mode` says.
fn dying_primary(test: &str, mode: &str) {
    let (mut lp, p) = primary(test);
    let mode = mode.to_string();
    p.on(move |_, p, ev| {
        if let Event::Online { worker } = ev {
            println!("worker-pid {}", p.worker(*worker).unwrap().pid);
            std::io::stdout().flush().unwrap();
            match mode.as_str() {
                "exit" => std::process::exit(0),
                _ => {
                    // An uncaught error in the primary; keep the expected panic quiet.
                    std::panic::set_hook(Box::new(|_| {}));
                    panic!("primary error")
                }
            }
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
}

fn worker_pid(out: &str) -> u32 {
    out.lines()
        .find_map(|l| l.strip_prefix("worker-pid "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no worker pid in {out:?}"))
}

#[test]
fn primary_kill() {
    worker(|_, _| {}); // idle; only the channel keeps it up
    if let Some(mode) = sub_mode() {
        dying_primary("primary_kill", &mode);
        return;
    }
    let (status, out) = sub_primary("primary_kill", "exit");
    let pid = worker_pid(&out);
    let _guard = PidGuard(pid);
    assert_eq!(status.code(), Some(0));
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "worker outlived the primary"
    );
}

#[test]
fn primary_error() {
    worker(|_, _| {});
    if let Some(mode) = sub_mode() {
        dying_primary("primary_error", &mode);
        return;
    }
    let (status, out) = sub_primary("primary_error", "panic");
    let pid = worker_pid(&out);
    let _guard = PidGuard(pid);
    assert_ne!(status.code(), Some(0), "the primary failed");
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "worker outlived the primary"
    );
}

#[test]
fn silent_output_is_line_prefixed() {
    worker(|lp, w| {
        // Many lines, some written in pieces, from two workers at once.
        let mut out = std::io::stdout().lock();
        for i in 0..200 {
            write!(out, "line {i} of worker").unwrap();
            out.flush().unwrap();
            writeln!(out, " {} end", w.id()).unwrap();
        }
        out.flush().unwrap();
        w.disconnect(lp);
    });
    if sub_mode().is_some() {
        let (mut lp, p) = primary("silent_output_is_line_prefixed");
        p.setup(&mut lp, Settings::default().silent(true));
        p.fork(&mut lp).unwrap();
        p.fork(&mut lp).unwrap();
        run(&mut lp);
        return;
    }
    let (status, out) = sub_primary("silent_output_is_line_prefixed", "silent");
    assert!(status.success());
    let mut counts = [0usize; 3];
    for line in out.lines().filter(|l| l.starts_with("[worker ")) {
        let (prefix, rest) = line.split_once("] ").unwrap();
        let id: usize = prefix["[worker ".len()..].parse().unwrap();
        // libtest's own chatter in the worker is prefixed too; count our lines.
        if rest.starts_with("line ") {
            assert!(
                rest.ends_with(&format!("of worker {id} end")),
                "torn line: {line:?}"
            );
            counts[id] += 1;
        }
    }
    assert_eq!(counts[1..], [200, 200], "every line arrives whole, once");
}

#[cfg(feature = "serde")]
#[test]
fn typed_messages_via_serde() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Job {
        id: u32,
        name: String,
    }
    worker(|lp, w| {
        w.on_message(lp, |lp, w, m| {
            let job: Job = m.json().unwrap();
            w.send_json(
                lp,
                &Job {
                    id: job.id + 1,
                    name: job.name.to_uppercase(),
                },
            )
            .unwrap();
            w.disconnect(lp);
        });
    });
    let (mut lp, p) = primary("typed_messages_via_serde");
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Online { worker } => p
            .send_json(
                lp,
                *worker,
                &Job {
                    id: 41,
                    name: "task".into(),
                },
            )
            .unwrap(),
        Event::Message { data, .. } => {
            *g.borrow_mut() = Some(serde_json::from_slice::<Job>(data).unwrap())
        }
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(
        *got.borrow(),
        Some(Job {
            id: 42,
            name: "TASK".into()
        })
    );
}

#[test]
fn channel_fd_not_inherited_by_grandchildren() {
    // Read before `role()` consumes it: the channel's descriptor number in this worker.
    let fd = std::env::var(CHANNEL_FD_ENV).ok();
    worker(move |lp, w| {
        let fd = fd.expect("channel fd variable");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "if [ -e /proc/self/fd/{fd} ]; then echo inherited; else echo clean; fi"
            ))
            .output()
            .unwrap();
        w.send(lp, String::from_utf8_lossy(&out.stdout).trim().as_bytes())
            .unwrap();
        w.disconnect(lp);
    });
    let (mut lp, p) = primary("channel_fd_not_inherited_by_grandchildren");
    let got = Rc::new(RefCell::new(String::new()));
    let g = got.clone();
    p.on(move |_, _, ev| {
        if let Event::Message { data, .. } = ev {
            *g.borrow_mut() = String::from_utf8_lossy(data).into();
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(*got.borrow(), "clean");
}

#[test]
fn idle_connections_close_when_the_server_closes() {
    // A keep-alive client that made one request and went quiet must not hold a leaving
    // worker until a deadline: connections marked idle close with the server.
    worker(|lp, w| {
        // The connection callback gets its server: no slot to fill in afterwards.
        let server = Server::bind(lp, local(), move |lp, server, conn| {
            let s = server.clone();
            conn.on_data(lp, move |lp, c, _| {
                c.write(lp, b"answer");
                s.set_idle(lp, c, true);
            });
        })
        .unwrap();
        server.announce(lp, w, 0);
    });
    let (mut lp, p) = primary("idle_connections_close_when_the_server_closes");
    let client: Rc<RefCell<Option<std::net::TcpStream>>> = Rc::default();
    let started = Rc::new(Cell::new(None));
    let took = Rc::new(Cell::new(None));
    let (c, st, tk) = (client.clone(), started.clone(), took.clone());
    p.on(move |lp, p, ev| match ev {
        Event::Listening {
            worker,
            address: Endpoint::Tcp(addr),
        } => {
            let mut s = std::net::TcpStream::connect(*addr).unwrap();
            s.write_all(b"request").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 6];
            s.read_exact(&mut b).unwrap();
            *c.borrow_mut() = Some(s); // the client stays connected, silent
            st.set(Some(std::time::Instant::now()));
            p.disconnect_worker(lp, *worker);
        }
        Event::Exit { status, .. } => {
            assert_eq!(status.code, Some(0));
            tk.set(st.get().map(|t| t.elapsed()));
        }
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let took = took.get().expect("the worker exited");
    assert!(
        took < Duration::from_secs(2),
        "idle connection held the worker for {took:?}"
    );
    let mut b = [0u8; 1];
    let n = client.borrow_mut().as_mut().unwrap().read(&mut b).unwrap();
    assert_eq!(n, 0, "the idle client sees a clean close");
}

#[test]
fn a_closing_server_gives_idle_connections_a_grace_before_ending_them() {
    // Two keep-alive clients each got an answer (their connections are idle) when the
    // server closes. One sends its next request 30 ms later, inside the 300 ms grace: it
    // is answered (with a goodbye), not reset. The other stays silent: it is ended, cleanly,
    // once it has been idle for the grace.
    thread_local! {
        // The loop thread's server, for the close posted from the client thread (a
        // posted closure must be `Send`, so it cannot carry the handle).
        static SERVER: RefCell<Option<Server>> = const { RefCell::new(None) };
    }
    let mut lp = EventLoop::new().unwrap();
    let server = Server::bind(&mut lp, local(), move |lp, server, conn| {
        let s = server.clone();
        conn.on_data(lp, move |lp, c, _| {
            s.set_idle(lp, c, false);
            if s.is_closing() {
                c.write(lp, b"bye");
                c.end(lp);
            } else {
                c.write(lp, b"ok");
                s.set_idle(lp, c, true);
            }
        });
        conn.on_end(lp, |lp, c| c.end(lp));
    })
    .unwrap();
    server.set_idle_grace(Duration::from_millis(300));
    let addr = server.address().unwrap();
    SERVER.with(|s| *s.borrow_mut() = Some(server));
    let connect = move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"1").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
        s
    };
    let handle = lp.handle();
    let clients = std::thread::spawn(move || {
        let (mut busy, mut quiet) = (connect(), connect());
        let (tx, rx) = std::sync::mpsc::channel();
        handle.post(move |lp| {
            if let Some(s) = SERVER.with(|s| s.borrow().clone()) {
                s.close(lp, |_| {});
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap(); // the server is closing
        let closed_at = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        busy.write_all(b"2").unwrap();
        let mut got = Vec::new();
        let busy_got = busy.read_to_end(&mut got).map(|_| got);
        let mut rest = Vec::new();
        let quiet_got = quiet
            .read_to_end(&mut rest)
            .map(|n| (n, closed_at.elapsed()));
        (busy_got, quiet_got)
    });
    lp.run().unwrap();
    SERVER.with(|s| s.borrow_mut().take());
    let (busy, quiet) = clients.join().unwrap();
    assert_eq!(
        busy.unwrap(),
        b"bye",
        "the request inside the grace is answered"
    );
    let (n, after) = quiet.unwrap();
    assert_eq!(n, 0, "the silent client sees a clean close");
    assert!(
        after >= Duration::from_millis(200),
        "the silent client was ended {after:?} after the close, before its grace"
    );
}
