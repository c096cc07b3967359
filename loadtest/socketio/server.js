// One node of the Socket.IO comparison cluster: Socket.IO with the Redis adapter, so that nodes
// sharing one Redis deliver each other's emits. It mirrors what the bench measures on the chat
// system: JWT (HS256) verified at connect, sockets joining their user's room and the chat rooms
// named at connect, and `POST /v1/chats/:id/messages` emitting a `message` event to the chat's room
// (nothing is stored: the figures are the messaging layer's alone).
//
//   PORT=3000 REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=... node server.js
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || '127.0.0.1';
const SECRET = process.env.JWT_SECRET || '';
const BODY_BYTES_MAX = 64 * 1024;

if (SECRET.length < 32) {
  console.error('JWT_SECRET must be at least 32 bytes');
  process.exit(2);
}

// Returns the token's subject when its HS256 signature and expiry are valid, else null.
function verify(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  const mac = crypto.createHmac('sha256', SECRET).update(parts[0] + '.' + parts[1]).digest();
  const sig = Buffer.from(parts[2], 'base64url');
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    if (header.alg !== 'HS256') return null;
    if (typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) return null;
    return typeof claims.sub === 'string' ? claims.sub : null;
  } catch {
    return null;
  }
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379' });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, { transports: ['websocket'], serveClient: false });
  io.adapter(createAdapter(pub, sub));

  io.use((socket, next) => {
    const user = verify(socket.handshake.query.access_token);
    if (!user) return next(new Error('unauthorized'));
    socket.data.user = user;
    next();
  });
  io.on('connection', (socket) => {
    socket.join('user:' + socket.data.user);
    const chats = String(socket.handshake.query.chats || '');
    for (const chat of chats.split(',')) if (chat) socket.join('chat:' + chat);
  });

  let seq = 0;
  server.on('request', (req, res) => {
    if (req.url.startsWith('/socket.io')) return; // Engine.IO's own handler answers these.
    const m = /^\/v1\/chats\/([A-Za-z0-9._-]{1,64})\/messages$/.exec(req.url);
    if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { ok: true });
    if (req.method !== 'POST' || !m) return reply(res, 404, { title: 'not found' });
    const auth = req.headers.authorization || '';
    const sender = verify(auth.startsWith('Bearer ') ? auth.slice(7) : '');
    if (!sender) return reply(res, 401, { title: 'unauthorized' });
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > BODY_BYTES_MAX) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString());
      } catch {
        return reply(res, 400, { title: 'body is not JSON' });
      }
      const message = {
        chat_id: m[1],
        message_id: String(Date.now() * 1000 + (seq++ % 1000)),
        sender_id: sender,
        client_msg_id: String(body.client_msg_id || ''),
        body: String(body.body || ''),
        sent_at_ms: Date.now(),
      };
      io.to('chat:' + m[1]).emit('message', { message });
      reply(res, 201, message);
    });
  });

  server.listen(PORT, HOST, () => console.log(`socket.io node listening on ${HOST}:${PORT}`));
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
