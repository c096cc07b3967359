//! Route registry in Redis (routes, liveness, presence, the sweep of dead nodes); the key layout
//! is in the parent module's docs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use fred::interfaces::{
    HashesInterface, KeysInterface, LuaInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::{Expiration, Value};
use parking_lot::Mutex;

use super::{
    as_string, ms_i64, pairs, queue, queue_eval, strings, Shared, CLEANUP_BATCH, DEL_IF_EQ,
    HDEL_IF_EQ,
};
use crate::ids::now_unix_ms;
use crate::routing::{
    NodeGroups, NodeInfo, NodeLoad, NodeStatus, PresenceInfo, RouteRegistry, RoutingError,
};

/// What one [`RedisRegistry::sweep`] call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub nodes_checked: usize,
    /// Routes examined (removed unless a newer incarnation had already replaced them).
    pub routes_examined: usize,
    /// Dead nodes whose routes are all gone and that were dropped from `gw:nodes`.
    pub nodes_forgotten: usize,
}

/// Route registry in Redis; see the module docs for the key layout.
pub struct RedisRegistry {
    pub(super) shared: Arc<Shared>,
    /// Nodes this process has heartbeated, to notice when their liveness key vanished.
    pub(super) heartbeated: Mutex<HashSet<(String, u64)>>,
    /// Live nodes that recent lookups found routes to, newest last, at most
    /// [`LOOKUP_NODES_MAX`]: a lookup reads their liveness in the pipeline that reads the
    /// routes, so a lookup whose users are all on these nodes takes one round trip, not two.
    /// Only which keys to read is remembered; their values are read every time.
    pub(super) lookup_nodes: Mutex<Vec<String>>,
}

/// Nodes whose liveness a lookup reads along with the routes before it knows which it needs.
const LOOKUP_NODES_MAX: usize = 16;

impl RedisRegistry {
    /// Removes routes of dead nodes and of stale incarnations, at most `max_routes` per call
    /// (plus one batch), and forgets dead nodes left without routes (deleting their streams).
    /// Meant for a periodic task in chat-api; concurrent sweeps split the work (`SPOP`).
    pub async fn sweep(&self, max_routes: usize) -> Result<SweepReport, RoutingError> {
        let s = &self.shared;
        let scored = s.known_nodes().await?;
        let mut report = SweepReport {
            nodes_checked: scored.len(),
            ..SweepReport::default()
        };
        if scored.is_empty() {
            return Ok(report);
        }
        let p = s.pipeline();
        for node in &scored {
            queue(p.get::<(), _>(s.keys.alive(node)).await)?;
            queue(p.smembers::<(), _>(s.keys.incs(node)).await)?;
        }
        let replies = s.run(p).await?;
        let mut budget = max_routes;
        for (i, node) in scored.iter().enumerate() {
            let live = as_string(&replies[2 * i]);
            let incs = strings(replies[2 * i + 1].clone());
            let mut all_clean = true;
            for inc in incs.iter().filter(|inc| Some(*inc) != live.as_ref()) {
                if budget == 0 {
                    all_clean = false;
                    break;
                }
                let (examined, emptied) = self.drain_incarnation(node, inc, budget).await?;
                report.routes_examined += examined;
                budget = budget.saturating_sub(examined);
                all_clean &= emptied;
            }
            if live.is_none() && all_clean {
                let p = s.pipeline();
                queue(p.zrem::<(), _, _>(s.keys.nodes(), node.clone()).await)?;
                queue(p.del::<(), _>(s.keys.stream(node)).await)?;
                s.run(p).await?;
                report.nodes_forgotten += 1;
            }
        }
        Ok(report)
    }

    /// Pops up to `max` users of one incarnation and deletes their routes to it. Returns the
    /// number examined and whether the incarnation has no users left (it is then forgotten).
    async fn drain_incarnation(
        &self,
        node: &str,
        inc: &str,
        max: usize,
    ) -> Result<(usize, bool), RoutingError> {
        let s = &self.shared;
        let mut examined = 0;
        while examined < max {
            let want = CLEANUP_BATCH.min(max - examined);
            let users = strings(
                s.timed(
                    s.client
                        .spop::<Value, _>(s.keys.users(node, inc), Some(want)),
                )
                .await?,
            );
            let stale: Vec<(String, String, String)> = users
                .iter()
                .map(|u| (u.clone(), node.to_string(), inc.to_string()))
                .collect();
            s.delete_routes(&stale, None).await?;
            examined += users.len();
            if users.len() < want {
                s.timed(
                    s.client
                        .srem::<(), _, _>(s.keys.incs(node), inc.to_string()),
                )
                .await?;
                return Ok((examined, true));
            }
        }
        Ok((examined, false))
    }
}

#[async_trait]
impl RouteRegistry for RedisRegistry {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<bool, RoutingError> {
        let s = &self.shared;
        let inc = node.incarnation.to_string();
        let p = s.pipeline();
        queue(
            p.set::<(), _, _>(
                s.keys.alive(&node.node_id),
                inc.clone(),
                Some(Expiration::PX(ms_i64(s.opts.liveness_ttl))),
                None,
                true,
            )
            .await,
        )?;
        queue(
            p.sadd::<(), _, _>(s.keys.incs(&node.node_id), inc.clone())
                .await,
        )?;
        queue(
            p.zadd::<(), _, _>(
                s.keys.nodes(),
                None,
                None,
                false,
                false,
                (now_unix_ms() as f64, node.node_id.clone()),
            )
            .await,
        )?;
        let replies = s.run(p).await?;
        let previous = replies.first().and_then(as_string);
        let known = previous.as_deref() == Some(inc.as_str());
        let first = self
            .heartbeated
            .lock()
            .insert((node.node_id.clone(), node.incarnation));
        if !first && previous.as_deref() != Some(inc.as_str()) {
            match previous {
                None => tracing::warn!(
                    node = %node.node_id,
                    "node liveness key had expired or was lost; routes must be re-registered"
                ),
                Some(other) => tracing::error!(
                    node = %node.node_id,
                    incarnation = node.incarnation,
                    other = %other,
                    "another process heartbeats the same node id; check NODE_ID is unique"
                ),
            }
            s.epoch.send_modify(|e| *e += 1);
        }
        Ok(known)
    }

    async fn leave(&self, node: &NodeInfo) -> Result<(), RoutingError> {
        let s = &self.shared;
        let inc = node.incarnation.to_string();
        let removed: i64 = s
            .timed(
                s.client
                    .eval(DEL_IF_EQ, s.keys.alive(&node.node_id), inc.clone()),
            )
            .await?;
        self.heartbeated
            .lock()
            .remove(&(node.node_id.clone(), node.incarnation));
        // Every route of this incarnation goes, and its users count as last seen now.
        let now = now_unix_ms();
        loop {
            let users = strings(
                s.timed(
                    s.client
                        .spop::<Value, _>(s.keys.users(&node.node_id, &inc), Some(CLEANUP_BATCH)),
                )
                .await?,
            );
            let stale: Vec<(String, String, String)> = users
                .iter()
                .map(|u| (u.clone(), node.node_id.clone(), inc.clone()))
                .collect();
            s.delete_routes(&stale, Some(now)).await?;
            if users.len() < CLEANUP_BATCH {
                break;
            }
        }
        let p = s.pipeline();
        queue(p.srem::<(), _, _>(s.keys.incs(&node.node_id), inc).await)?;
        if removed == 1 {
            // This was the node's current incarnation: nobody reads its stream any more.
            queue(p.del::<(), _>(s.keys.stream(&node.node_id)).await)?;
        }
        s.run(p).await.map(|_| ())
    }

    async fn add_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        if users.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let inc = node.incarnation.to_string();
        let p = s.pipeline();
        for user in users {
            queue(
                p.hset::<(), _, _>(s.keys.route(user), (node.node_id.clone(), inc.clone()))
                    .await,
            )?;
        }
        queue(
            p.sadd::<(), _, _>(s.keys.users(&node.node_id, &inc), users.to_vec())
                .await,
        )?;
        s.run(p).await.map(|_| ())
    }

    async fn remove_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        if users.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let inc = node.incarnation.to_string();
        // One pipeline: the route deletions, last-seen times and the membership update.
        let p = s.pipeline();
        let now = now_unix_ms().to_string();
        for user in users {
            queue_eval(&p, HDEL_IF_EQ, s.keys.route(user), [&node.node_id, &inc]).await?;
            queue(
                p.set::<(), _, _>(
                    s.keys.seen(user),
                    now.clone(),
                    Some(Expiration::PX(ms_i64(s.opts.last_seen_ttl))),
                    None,
                    false,
                )
                .await,
            )?;
        }
        queue(
            p.srem::<(), _, _>(s.keys.users(&node.node_id, &inc), users.to_vec())
                .await,
        )?;
        s.run(p).await.map(|_| ())
    }

    async fn lookup(&self, users: &[String]) -> Result<NodeGroups, RoutingError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let guessed = self.lookup_nodes.lock().clone();
        let (routes, mut live) = s.read_routes_and_liveness(users, &guessed).await?;
        let missing: Vec<String> = distinct_nodes(&routes)
            .into_iter()
            .filter(|n| !guessed.contains(n))
            .collect();
        if !missing.is_empty() {
            live.extend(s.live_incarnations(&missing).await?);
        }
        if !missing.is_empty() || guessed.iter().any(|n| !live.contains_key(n)) {
            // Dead nodes are forgotten; the newly seen live ones are added, the oldest dropped.
            let mut nodes: Vec<String> = guessed
                .into_iter()
                .chain(missing)
                .filter(|n| live.contains_key(n))
                .collect();
            let excess = nodes.len().saturating_sub(LOOKUP_NODES_MAX);
            nodes.drain(..excess);
            *self.lookup_nodes.lock() = nodes;
        }

        let mut groups: NodeGroups = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut stale = Vec::new();
        for (user, user_routes) in users.iter().zip(&routes) {
            for (node, inc) in user_routes {
                if live.get(node) != Some(inc) {
                    stale.push((user.clone(), node.clone(), inc.clone()));
                    continue;
                }
                let i = *index.entry(node.as_str()).or_insert_with(|| {
                    groups.push((node.clone(), Vec::new()));
                    groups.len() - 1
                });
                groups[i].1.push(user.clone());
            }
        }
        if !stale.is_empty() {
            // Off the delivery path: the caller does not wait for the cleanup round trip.
            let shared = s.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.delete_routes(&stale, None).await {
                    tracing::debug!(error = %e, "lazy removal of stale routes failed");
                }
            });
        }
        Ok(groups)
    }

    async fn presence(&self, users: &[String]) -> Result<Vec<PresenceInfo>, RoutingError> {
        let Some((last, rest)) = users.split_last() else {
            return Ok(Vec::new());
        };
        let s = &self.shared;
        let p = s.pipeline();
        for user in rest {
            queue(p.hgetall::<(), _>(s.keys.route(user)).await)?;
            queue(p.get::<(), _>(s.keys.seen(user)).await)?;
        }
        queue(p.hgetall::<(), _>(s.keys.route(last)).await)?;
        // The last user's last-seen `GET` goes behind the pipeline: one socket write in all.
        let trailing = s.cmd();
        let mut replies = s
            .run_behind(p, trailing.get::<Value, _>(s.keys.seen(last)))
            .await?
            .into_iter();
        let mut routes = Vec::with_capacity(users.len());
        let mut seen = Vec::with_capacity(users.len());
        while let (Some(r), Some(t)) = (replies.next(), replies.next()) {
            routes.push(pairs(r));
            seen.push(as_string(&t).and_then(|t| t.parse::<u64>().ok()));
        }
        let live = s.live_incarnations(&distinct_nodes(&routes)).await?;
        Ok(users
            .iter()
            .zip(routes.iter().zip(seen))
            .map(|(user, (user_routes, seen))| {
                let online = user_routes
                    .iter()
                    .any(|(node, inc)| live.get(node) == Some(inc));
                PresenceInfo {
                    user_id: user.clone(),
                    online,
                    last_seen_ms: if online { None } else { seen },
                }
            })
            .collect())
    }
    /// Nodes in `gw:nodes` (at most 1,000) whose liveness key is set: two round trips.
    async fn live_nodes(&self) -> Result<Vec<String>, RoutingError> {
        let s = &self.shared;
        let known = s.known_nodes().await?;
        let live = s.live_incarnations(&known).await?;
        Ok(known.into_iter().filter(|n| live.contains_key(n)).collect())
    }

    async fn report_load(&self, node: &NodeInfo, load: NodeLoad) -> Result<(), RoutingError> {
        let s = &self.shared;
        let key = s.keys.load(&node.node_id);
        let p = s.pipeline();
        queue(
            p.hset::<(), _, _>(
                key.clone(),
                vec![
                    ("inc", node.incarnation.to_string()),
                    ("sockets", load.sockets.to_string()),
                    ("users", load.users.to_string()),
                    ("at", now_unix_ms().to_string()),
                ],
            )
            .await,
        )?;
        queue(
            p.pexpire::<(), _>(key, ms_i64(s.opts.liveness_ttl), None)
                .await,
        )?;
        s.run(p).await.map(|_| ())
    }

    /// Nodes in `gw:nodes` (at most 1,000) whose liveness key is set, with the load their live
    /// incarnation reported: two round trips.
    async fn node_statuses(&self) -> Result<Vec<NodeStatus>, RoutingError> {
        let s = &self.shared;
        let known = s.known_nodes().await?;
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let p = s.pipeline();
        for node in &known {
            queue(p.get::<(), _>(s.keys.alive(node)).await)?;
            queue(p.hgetall::<(), _>(s.keys.load(node)).await)?;
        }
        let replies = s.run(p).await?;
        let mut out = Vec::new();
        for (i, node) in known.into_iter().enumerate() {
            let Some(incarnation) = as_string(&replies[2 * i]).and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            let fields: HashMap<String, String> =
                pairs(replies[2 * i + 1].clone()).into_iter().collect();
            let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
            let load = match (num("inc"), num("sockets"), num("users"), num("at")) {
                (Some(inc), Some(sockets), Some(users), Some(at)) if inc == incarnation => {
                    Some((NodeLoad { sockets, users }, at))
                }
                _ => None,
            };
            out.push(NodeStatus {
                node_id: node,
                incarnation,
                load,
            });
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    /// `SET … GET` per user, pipelined: one round trip.
    async fn swap_announced(
        &self,
        users: &[(String, bool)],
    ) -> Result<Vec<Option<bool>>, RoutingError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let p = s.pipeline();
        for (user, online) in users {
            queue(
                p.set::<(), _, _>(
                    s.keys.announced(user),
                    if *online { "1" } else { "0" },
                    Some(Expiration::PX(ms_i64(s.opts.last_seen_ttl))),
                    None,
                    true,
                )
                .await,
            )?;
        }
        Ok(s.run(p)
            .await?
            .iter()
            .map(|v| as_string(v).map(|old| old == "1"))
            .collect())
    }
}

fn distinct_nodes(routes: &[Vec<(String, String)>]) -> Vec<String> {
    let mut seen = HashSet::new();
    routes
        .iter()
        .flatten()
        .filter(|(node, _)| seen.insert(node.as_str()))
        .map(|(node, _)| node.clone())
        .collect()
}
