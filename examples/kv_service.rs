//! A JSON key-value service over HTTP: the primary holds the store, each of two workers
//! keeps a cache. `GET /kv/<key>` answers from the cache (`X-Cache: hit`) or asks the
//! primary (`miss`; 404 if there is no such key); `PUT /kv/<key>` stores a JSON body (400
//! if it is not JSON; 201 created, 200 updated) and the primary tells every other worker to
//! drop its cached copy. Other methods get 405, other paths 404. Every answer is JSON with
//! `X-Worker` (the worker's id) and `X-Cache` (`hit`, `miss` or `-`).
//!
//! A worker asks the primary with a numbered question and keeps the response that waits
//! for the answer in its loop's state under that number (a slab of responses from the
//! `slab` crate, which forkloop uses too: the number is the response's key); the answer
//! ends it. The same program as Node's classic cached
//! key-value cluster (promises keyed by a request number), with three differences: it
//! listens on 127.0.0.1 only (Node: every interface), writes object keys sorted (Node: in
//! insertion order), and a worker caches a value it puts once the primary has stored it
//! (Node: before asking), so a GET racing a PUT on the same worker says `miss` where Node
//! says `hit` — with the same value, as the primary answers each worker in order.
//!
//! Run: `cargo run --features serde --example kv_service -- [--port P]` (default 8124; 0
//! picks a free port). The primary prints `listening on ADDR` once worker 1 listens.

use forkloop::http::{Config, Request, Response, Server};
use forkloop::primary::{Event, Primary};
use forkloop::worker::Worker;
use forkloop::{EventLoop, Side};
use serde_json::{Map, Value, json};

/// The store (in the primary) or a worker's cache: one per process, on its loop.
type Values = Map<String, Value>;

fn on_event(lp: &mut EventLoop, p: &Primary, ev: &mut Event) -> Option<()> {
    if let Event::Listening { worker: 1, address } = ev {
        println!("listening on {address}");
    }
    // The answer is the question with its result: `created`, and the key's `value` (none in
    // the answer: no such key).
    let (w, mut m) = (ev.worker()?, ev.json::<Value>()?.ok()?);
    let (key, store) = (m["key"].as_str()?.to_string(), lp.state::<Values>());
    if m["type"] == "put" {
        m["created"] = json!(store.insert(key.clone(), m["value"].clone()).is_none());
        let _ = p.broadcast_json(lp, Some(w), &json!({ "type": "invalidate", "key": key }));
    } else if let Some(value) = store.get(&key) {
        m["value"] = value.clone();
    }
    p.send_json(lp, w, &m).ok()
}

fn error(text: impl ToString) -> Value {
    json!({ "error": text.to_string() })
}

fn send(lp: &mut EventLoop, mut res: Response, code: u16, body: &Value, cache: &str) {
    // These fail only for a client that has gone away; then `end` does nothing either.
    let _ = res.set_status(code);
    let _ = res.set_header("X-Cache", cache);
    res.end(lp, format!("{body}\n").as_bytes());
}

fn on_request(lp: &mut EventLoop, w: &Worker, req: &Request, mut res: Response) {
    let _ = res.set_header("Content-Type", "application/json");
    let _ = res.set_header("X-Worker", &w.id().to_string());
    let key = req.target().strip_prefix("/kv/").filter(|k| !k.is_empty());
    let cached = key.and_then(|k| lp.state::<Values>().get(k).cloned());
    let mut question = match (key, req.method(), cached) {
        (None, ..) => return send(lp, res, 404, &error("try /kv/<key>"), "-"),
        (_, "GET", Some(value)) => return send(lp, res, 200, &value, "hit"),
        (Some(key), "GET", None) => json!({ "type": "get", "key": key }),
        (Some(key), "PUT", _) => match serde_json::from_slice::<Value>(req.body()) {
            Ok(value) => json!({ "type": "put", "key": key, "value": value }),
            Err(e) => return send(lp, res, 400, &error(format!("body is not JSON: {e}")), "-"),
        },
        _ => return send(lp, res, 405, &error("GET or PUT"), "-"),
    };
    // Ask the primary under the number the response gets in the slab; `on_answer` ends it.
    question["req"] = lp.state::<slab::Slab<Response>>().vacant_key().into();
    match w.send_json(lp, &question) {
        Ok(()) => _ = lp.state::<slab::Slab<Response>>().insert(res),
        Err(e) => send(lp, res, 503, &error(e), "-"),
    }
}

/// A message from the primary: the answer to a question, or a key to drop from the cache.
fn on_answer(lp: &mut EventLoop, m: Value) -> Option<()> {
    let (key, cache) = (m["key"].as_str()?, lp.state::<Values>());
    // Whatever value the primary answers with is the key's value now: cache it.
    if let Some(value) = m.get("value") {
        cache.insert(key.into(), value.clone());
    }
    let (code, body, cache) = match (m["type"].as_str()?, &m["created"], m.get("value")) {
        ("invalidate", ..) => return cache.remove(key).map(drop),
        (_, Value::Bool(c), _) => (if *c { 201 } else { 200 }, json!({ "ok": true }), "-"),
        (_, _, Some(value)) => (200, value.clone(), "miss"),
        _ => (404, error("no such key"), "miss"),
    };
    let req = m["req"].as_u64()? as usize;
    let res = lp.state::<slab::Slab<Response>>().try_remove(req)?;
    send(lp, res, code, &body, cache);
    Some(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args().skip_while(|a| a != "--port").nth(1);
    let port: u16 = port.as_deref().unwrap_or("8124").parse()?;
    let mut lp = EventLoop::new()?;
    match forkloop::start(&mut lp)? {
        Side::Primary(p) => {
            (0..2).try_for_each(|_| p.fork(&mut lp).map(drop))?;
            p.on(|lp, p, ev| _ = on_event(lp, p, ev));
        }
        Side::Worker(w) => {
            w.on_message(&mut lp, |lp, _, m| _ = m.json().map(|m| on_answer(lp, m)));
            let (id, addr, cfg) = (w.id(), ([127, 0, 0, 1], port).into(), Config::default());
            let srv = Server::listen(&mut lp, Some(&w.clone()), addr, cfg, move |lp, req, res| {
                on_request(lp, &w, req, res)
            });
            srv.net().on_error(move |lp, _, e| {
                eprintln!("worker {id}: cannot listen: {e}");
                lp.exit(1);
            });
        }
    }
    std::process::exit(lp.run()?)
}
