// An ordinary Node.js cluster app: under plain `node` its primary forks two workers; under
// a forkloop primary every process is a worker. Nothing in it knows about forkloop.
const cluster = require('cluster');
const http = require('http');

if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
} else {
  // A broken release: the worker dies at start while this file exists.
  if (process.env.FAIL_IF && require('fs').existsSync(process.env.FAIL_IF)) process.exit(3);
  console.log(`up ${cluster.worker.id}`);
  const server = http.createServer((req, res) => {
    res.end(`worker ${cluster.worker.id} pid ${process.pid}\n`);
  });
  if (process.env.MAX_CONNECTIONS) server.maxConnections = Number(process.env.MAX_CONNECTIONS);
  // HOST set: `listen(port, host, cb)`, as most apps that bind one address write it.
  const listenArgs = process.env.HOST ? [Number(process.env.PORT || 0), process.env.HOST] : [Number(process.env.PORT || 0)];
  server.listen(...listenArgs, () => {
    process.send({ listening: cluster.worker.id, port: server.address().port });
  });
  process.on('message', (m) => {
    if (m && m.echo !== undefined) process.send({ echoed: m.echo, worker: cluster.worker.id });
    if (m && m.leave) cluster.worker.disconnect();
    // Relays through the primary: to one worker, or to every other one.
    if (m && m.relayTo) process.send({ forkloop: 'relay', to: m.relayTo, data: { hi: cluster.worker.id } });
    if (m && m.broadcastNow) process.send({ forkloop: 'broadcast', data: { all: cluster.worker.id } });
    if (m && m.forkloop === 'relay') process.send({ gotRelay: m.data, from: m.from, me: cluster.worker.id });
  });
}
