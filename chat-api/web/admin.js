// The operators' page (admin.html): polls GET /v1/admin/nodes every 2 s with the pasted token and
// posts a user's disconnect or revoke. Everything shown is set as text, never parsed as HTML.

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function token() {
  return $("token").value.trim();
}

async function call(method, path) {
  const res = await fetch(path, { method, headers: { authorization: `Bearer ${token()}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${res.status}: ${body.detail || body.title || res.statusText}`);
  return body;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function render(list) {
  const rows = list.nodes.map((n) => {
    const tr = document.createElement("tr");
    cell(tr, n.node_id);
    cell(tr, n.incarnation);
    cell(tr, n.sockets ?? "–");
    cell(tr, n.users ?? "–");
    cell(tr, n.reported_at_ms ? `${Math.max(0, Math.round((Date.now() - n.reported_at_ms) / 1000))} s ago` : "–");
    return tr;
  });
  $("nodes").replaceChildren(...rows);
  $("total").textContent = String(list.sockets);
}

async function poll() {
  if (token()) {
    try {
      render(await call("GET", "/v1/admin/nodes"));
      $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $("status").textContent = e.message;
    }
  }
  setTimeout(poll, POLL_MS);
}

async function act(action) {
  const user = $("user").value.trim();
  if (!user) return;
  try {
    const r = await call("POST", `/v1/admin/users/${encodeURIComponent(user)}/${action}`);
    $("result").textContent = JSON.stringify(r, null, 2);
  } catch (e) {
    $("result").textContent = e.message;
  }
}

$("disconnect").addEventListener("click", () => act("disconnect"));
$("revoke").addEventListener("click", () => act("revoke"));
poll();
