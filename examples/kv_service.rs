//! A JSON key-value service over HTTP: the primary holds the store, each of two workers
//! keeps a cache. `GET /kv/<key>` answers from the cache (`X-Cache: hit`) or asks the
//! primary (`miss`; 404 if there is no such key); `PUT /kv/<key>` stores a JSON body (400
//! if it is not JSON; 201 created, 200 updated) and the primary tells every other worker to
//! drop its cached copy. Other methods get 405, other paths 404. Every answer is JSON with
//! `X-Worker` (the worker's id) and `X-Cache` (`hit`, `miss` or `-`).
//!
//! A worker asks the primary with a numbered question and keeps the response that waits
//! for the answer in its loop's state under that number; the answer ends it. The same
//! program as Node's classic cached key-value cluster (promises keyed by a request
//! number), which listens on every interface and writes object keys in insertion order;
//! this one listens on 127.0.0.1 only and writes object keys sorted.
//!
//! Run: `cargo run --features serde --example kv_service -- [--port P]` (default 8124; 0
//! picks a free port). The primary prints `listening on ADDR` once the first worker
//! listens.

use std::collections::HashMap;
use std::io;

use forkloop::http::{Config, Request, Response, Server};
use forkloop::primary::{Event, Primary};
use forkloop::worker::Worker;
use forkloop::{EventLoop, Side};
use serde_json::{Value, json};

/// The store (in the primary) or a worker's cache.
#[derive(Default)]
struct Values(HashMap<String, Value>);

/// A worker's responses waiting for the primary, by question number (the last one first).
#[derive(Default)]
struct Waiting(u64, HashMap<u64, Response>);

fn on_event(lp: &mut EventLoop, p: &Primary, ev: &mut Event) -> Option<()> {
    if let Event::Listening { worker: 1, address } = ev {
        println!("listening on {address}");
    }
    let (w, m) = (ev.worker()?, ev.json::<Value>()?.ok()?);
    let (key, store) = (m["key"].as_str()?, &mut lp.state::<Values>().0);
    // The answer echoes the key; no "value" at all means no such key.
    let mut answer = json!({ "req": m["req"], "key": key });
    if m["type"] == "get"
        && let Some(value) = store.get(key)
    {
        answer["value"] = value.clone();
    } else if m["type"] == "put" {
        let created = store.insert(key.into(), m["value"].clone()).is_none();
        answer["created"] = created.into();
        let _ = p.broadcast_json(lp, Some(w), &json!({ "type": "invalidate", "key": key }));
    }
    p.send_json(lp, w, &answer).ok()
}

fn error(text: impl ToString) -> Value {
    json!({ "error": text.to_string() })
}

fn send(lp: &mut EventLoop, mut res: Response, id: u32, code: u16, body: &Value, cache: &str) {
    // These fail only for a client that has gone away; then `end` does nothing either.
    let _ = res.set_status(code);
    let _ = res.set_header("Content-Type", "application/json");
    let _ = res.set_header("X-Worker", &id.to_string());
    let _ = res.set_header("X-Cache", cache);
    res.end(lp, format!("{body}\n").as_bytes());
}

/// Sends the primary the question `msg` under a new number; `on_answer` ends `res`.
fn ask(lp: &mut EventLoop, w: &Worker, res: Response, mut msg: Value) {
    let waiting = lp.state::<Waiting>();
    waiting.0 += 1;
    let req = waiting.0;
    waiting.1.insert(req, res);
    msg["req"] = req.into();
    if let Err(e) = w.send_json(lp, &msg)
        && let Some(res) = lp.state::<Waiting>().1.remove(&req)
    {
        send(lp, res, w.id(), 503, &error(e), "-");
    }
}

fn on_request(lp: &mut EventLoop, w: &Worker, req: &Request, res: Response) {
    let key = req.target().strip_prefix("/kv/").filter(|k| !k.is_empty());
    let cached = key.and_then(|k| lp.state::<Values>().0.get(k).cloned());
    let (code, body, cache) = match (key, req.method(), cached) {
        (None, ..) => (404, error("try /kv/<key>"), "-"),
        (_, "GET", Some(value)) => (200, value, "hit"),
        (Some(key), "GET", None) => return ask(lp, w, res, json!({ "type": "get", "key": key })),
        (Some(key), "PUT", _) => match serde_json::from_slice::<Value>(req.body()) {
            Ok(value) => {
                lp.state::<Values>().0.insert(key.into(), value.clone());
                let msg = json!({ "type": "put", "key": key, "value": value });
                return ask(lp, w, res, msg);
            }
            Err(e) => (400, error(format!("body is not JSON: {e}")), "-"),
        },
        _ => (405, error("GET or PUT"), "-"),
    };
    send(lp, res, w.id(), code, &body, cache);
}

/// A message from the primary: the answer to a question, or a key to drop from the cache.
fn on_answer(lp: &mut EventLoop, id: u32, m: &Value) -> Option<()> {
    let key = m["key"].as_str()?;
    if m["type"] == "invalidate" {
        return lp.state::<Values>().0.remove(key).map(drop);
    }
    let res = lp.state::<Waiting>().1.remove(&m["req"].as_u64()?)?;
    let (code, body, cache) = match (&m["created"], m.get("value")) {
        (Value::Bool(created), _) => (200 + u16::from(*created), json!({ "ok": true }), "-"),
        (_, Some(value)) => {
            lp.state::<Values>().0.insert(key.into(), value.clone());
            (200, value.clone(), "miss")
        }
        (_, None) => (404, error("no such key"), "miss"),
    };
    send(lp, res, id, code, &body, cache);
    Some(())
}

fn main() -> forkloop::Result<()> {
    let p = std::env::args().skip_while(|a| a != "--port").nth(1);
    let port: u16 = p
        .unwrap_or("8124".into())
        .parse()
        .map_err(io::Error::other)?;
    let mut lp = EventLoop::new()?;
    match forkloop::start(&mut lp)? {
        Side::Primary(p) => {
            (0..2).try_for_each(|_| p.fork(&mut lp).map(drop))?;
            p.on(|lp, p, ev| _ = on_event(lp, p, ev));
        }
        Side::Worker(w) => {
            let id = w.id();
            w.on_message(&mut lp, move |lp, _, m| {
                let m = m.json().inspect_err(|e| eprintln!("worker {id}: {e}"));
                _ = m.map(|m| on_answer(lp, id, &m));
            });
            let addr = ([127, 0, 0, 1], port).into();
            let (cfg, w2) = (Config::default(), w.clone());
            let server = Server::listen(&mut lp, Some(&w), addr, cfg, move |lp, req, res| {
                on_request(lp, &w2, req, res)
            });
            server.net().on_error(move |lp, _, e| {
                eprintln!("worker {id}: cannot listen: {e}");
                lp.exit(1);
            });
        }
    }
    std::process::exit(lp.run()?)
}
