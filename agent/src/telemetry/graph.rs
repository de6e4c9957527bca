//! The service graph: calls between services as the edge metrics of Tempo's
//! metrics-generator (`traces_service_graph_*`, names and labels as in Tempo 3.0), so that
//! Grafana draws the service map from sonde's `/metrics` alone.
//!
//! An edge is recorded once per call, when its client call finishes:
//! - the server end seen on this host (its span linked across processes, see
//!   `traces::links`) names the server, and its duration is the server seconds; the
//!   connection type is `database` for Redis and PostgreSQL, empty otherwise;
//! - a server not seen is a virtual node named by the call (the HTTP `Host`, the database's
//!   address), connection type `virtual_node` (`database` for a database, as Tempo does);
//! - a server request whose client sonde did not see records an edge from `user`, as
//!   Tempo does for a root span.
use std::hash::BuildHasher;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::identity::process::ProcessInfo;
use crate::telemetry::red::{HistogramFamily, Series};

/// Tempo's buckets: `ExponentialBuckets(0.1, 2, 8)`.
pub const GRAPH_BUCKETS: [f64; 8] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];
pub const GRAPH_LABELS: [&str; 3] = ["client", "server", "connection_type"];

/// `connection_type` values.
pub const DIRECT: &str = "";
pub const DATABASE: &str = "database";
pub const VIRTUAL_NODE: &str = "virtual_node";
/// The client of a server request whose caller sonde did not see.
pub const USER: &str = "user";

/// Edges kept with their own series; calls on further edges are counted as
/// label-set overflow and not recorded.
const MAX_EDGES: usize = 2000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub server: String,
    pub connection_type: String,
}

/// One call between two services.
#[derive(Clone, Copy, Debug)]
pub struct Edge<'a> {
    pub client: &'a str,
    pub server: &'a str,
    pub connection_type: &'static str,
    pub client_seconds: Option<f64>,
    pub server_seconds: Option<f64>,
    pub failed: bool,
}

pub struct ServiceGraph {
    requests: Family<EdgeLabels, Counter>,
    failed: Family<EdgeLabels, Counter>,
    pub server_seconds: HistogramFamily,
    pub client_seconds: HistogramFamily,
}

impl ServiceGraph {
    pub fn new(registry: &mut Registry) -> ServiceGraph {
        let requests = Family::<EdgeLabels, Counter>::default();
        let failed = Family::<EdgeLabels, Counter>::default();
        registry.register(
            "traces_service_graph_request",
            "Requests between two services (Tempo service graph)",
            requests.clone(),
        );
        registry.register(
            "traces_service_graph_request_failed",
            "Failed requests between two services (Tempo service graph)",
            failed.clone(),
        );
        let histogram = |name, prom, help| {
            HistogramFamily::new(
                name,
                prom,
                "s",
                help,
                &GRAPH_BUCKETS,
                &GRAPH_LABELS,
                MAX_EDGES,
            )
        };
        ServiceGraph {
            requests,
            failed,
            server_seconds: histogram(
                "traces_service_graph_request_server",
                "traces_service_graph_request_server",
                "Time the server took to answer, per edge (Tempo service graph)",
            ),
            client_seconds: histogram(
                "traces_service_graph_request_client",
                "traces_service_graph_request_client",
                "Time the client waited for the answer, per edge (Tempo service graph)",
            ),
        }
    }
}

/// One edge's series.
struct EdgeSeries {
    labels: EdgeLabels,
    handles: EdgeHandles,
}

#[derive(Clone)]
struct EdgeHandles {
    requests: Counter,
    failed: Counter,
    server_seconds: Arc<Series>,
    client_seconds: Arc<Series>,
}

impl EdgeHandles {
    fn observe(&self, edge: &Edge<'_>) {
        self.requests.inc();
        if edge.failed {
            self.failed.inc();
        }
        if let Some(s) = edge.server_seconds {
            self.server_seconds.observe(s, None);
        }
        if let Some(s) = edge.client_seconds {
            self.client_seconds.observe(s, None);
        }
    }
}

/// Edges between two processes seen, direct-mapped by the processes' identity (see
/// `EdgeCache::record_between`).
const PAIR_SLOTS: usize = 64;

/// The edge of a recent call between two processes seen on this host. The processes are
/// held, so that the addresses compared are theirs (`ProcessInfo` is immutable: the same
/// process value names the same service).
struct PairEntry {
    client: Arc<ProcessInfo>,
    server: Arc<ProcessInfo>,
    connection_type: &'static str,
    handles: EdgeHandles,
}

/// Whether two of the connection-type constants are the same: by address first, as the
/// callers pass the same constants.
fn same_static(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The capture thread's handles on the edges seen, so that a call builds no label strings.
#[derive(Default)]
pub struct EdgeCache {
    hasher: FxBuildHasher,
    by_hash: FxHashMap<u64, Vec<EdgeSeries>>,
    len: usize,
    pairs: Vec<Option<PairEntry>>,
}

impl EdgeCache {
    /// Records `edge`; false when it is a new edge past the cap (not recorded).
    pub fn record(&mut self, graph: &ServiceGraph, edge: &Edge<'_>) -> bool {
        match self.handles(graph, edge) {
            Some(handles) => {
                handles.observe(edge);
                true
            }
            None => false,
        }
    }

    /// Records `edge`, a call from process `client` to process `server` (whose service
    /// names are the edge's): found by comparing the two processes' addresses, without
    /// hashing the names, when a recent call took the same edge.
    pub fn record_between(
        &mut self,
        graph: &ServiceGraph,
        client: &Arc<ProcessInfo>,
        server: &Arc<ProcessInfo>,
        edge: &Edge<'_>,
    ) -> bool {
        debug_assert!(edge.client == client.service_name && edge.server == server.service_name);
        if self.pairs.is_empty() {
            self.pairs.resize_with(PAIR_SLOTS, || None);
        }
        let slot = ((Arc::as_ptr(client) as usize >> 6) ^ (Arc::as_ptr(server) as usize >> 4))
            % PAIR_SLOTS;
        let known = self.pairs[slot].as_ref().is_some_and(|p| {
            Arc::ptr_eq(&p.client, client)
                && Arc::ptr_eq(&p.server, server)
                && same_static(p.connection_type, edge.connection_type)
        });
        if !known {
            let Some(handles) = self.handles(graph, edge).cloned() else {
                return false;
            };
            self.pairs[slot] = Some(PairEntry {
                client: client.clone(),
                server: server.clone(),
                connection_type: edge.connection_type,
                handles,
            });
        }
        let pair = self.pairs[slot].as_ref().expect("just filled");
        pair.handles.observe(edge);
        true
    }

    /// The series of `edge`'s labels, made if new; None for a new edge past the cap.
    fn handles(&mut self, graph: &ServiceGraph, edge: &Edge<'_>) -> Option<&EdgeHandles> {
        let hash = self
            .hasher
            .hash_one((edge.client, edge.server, edge.connection_type));
        let same = |s: &EdgeSeries| {
            s.labels.client == edge.client
                && s.labels.server == edge.server
                && s.labels.connection_type == edge.connection_type
        };
        let entries = self.by_hash.entry(hash).or_default();
        let series = match entries.iter().position(same) {
            Some(i) => &entries[i],
            None => {
                if self.len >= MAX_EDGES {
                    return None;
                }
                let labels = EdgeLabels {
                    client: edge.client.to_string(),
                    server: edge.server.to_string(),
                    connection_type: edge.connection_type.to_string(),
                };
                let values = vec![
                    labels.client.clone(),
                    labels.server.clone(),
                    labels.connection_type.clone(),
                ];
                let handles = EdgeHandles {
                    requests: graph.requests.get_or_create(&labels).clone(),
                    failed: graph.failed.get_or_create(&labels).clone(),
                    server_seconds: graph.server_seconds.series(values.clone()),
                    client_seconds: graph.client_seconds.series(values),
                };
                entries.push(EdgeSeries { labels, handles });
                self.len += 1;
                entries.last().expect("pushed")
            }
        };
        Some(&series.handles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_counts_once_on_its_edge_and_the_edges_are_bounded() {
        let mut registry = Registry::default();
        let graph = ServiceGraph::new(&mut registry);
        let mut cache = EdgeCache::default();
        let edge = |server: &'static str, failed| Edge {
            client: "gateway",
            server,
            connection_type: DIRECT,
            client_seconds: Some(0.3),
            server_seconds: Some(0.25),
            failed,
        };
        for failed in [false, false, true] {
            assert!(cache.record(&graph, &edge("model", failed)));
        }
        let labels = EdgeLabels {
            client: "gateway".into(),
            server: "model".into(),
            connection_type: String::new(),
        };
        assert_eq!(graph.requests.get_or_create(&labels).get(), 3);
        assert_eq!(graph.failed.get_or_create(&labels).get(), 1);
        let server =
            graph
                .server_seconds
                .series(vec!["gateway".into(), "model".into(), String::new()]);
        let snapshot = server.snapshot();
        assert_eq!(snapshot.count, 3);
        // 0.25 s lands in the (0.2, 0.4] bucket.
        assert_eq!(snapshot.counts[2], 3);
        let names: Vec<String> = (0..MAX_EDGES + 10).map(|i| format!("s{i}")).collect();
        let admitted = names
            .iter()
            .filter(|n| {
                cache.record(
                    &graph,
                    &Edge {
                        server: n,
                        ..edge("x", false)
                    },
                )
            })
            .count();
        assert_eq!(admitted, MAX_EDGES - 1);
    }

    #[test]
    fn calls_between_processes_count_on_their_services_edge() {
        let mut registry = Registry::default();
        let graph = ServiceGraph::new(&mut registry);
        let mut cache = EdgeCache::default();
        let process = |pid, service| Arc::new(ProcessInfo::for_tests(pid, "app", service));
        let (api, api2, db) = (process(1, "api"), process(2, "api"), process(3, "redis"));
        fn edge<'a>(client: &'a ProcessInfo, server: &'a ProcessInfo, failed: bool) -> Edge<'a> {
            Edge {
                client: &client.service_name,
                server: &server.service_name,
                connection_type: DATABASE,
                client_seconds: Some(0.3),
                server_seconds: Some(0.25),
                failed,
            }
        }
        // Two processes of one service, the same edge; the reverse direction is another.
        for (client, server, failed) in [
            (&api, &db, false),
            (&api, &db, true),
            (&api2, &db, false),
            (&db, &api, false),
        ] {
            assert!(cache.record_between(&graph, client, server, &edge(client, server, failed)));
        }
        assert!(cache.record(&graph, &edge(&api, &db, false)));
        let count = |client: &str, server: &str| {
            let labels = EdgeLabels {
                client: client.into(),
                server: server.into(),
                connection_type: DATABASE.into(),
            };
            (
                graph.requests.get_or_create(&labels).get(),
                graph.failed.get_or_create(&labels).get(),
            )
        };
        assert_eq!(count("api", "redis"), (4, 1));
        assert_eq!(count("redis", "api"), (1, 0));
        // Past the cap, a new pair of processes is not recorded either.
        for i in 0..MAX_EDGES {
            cache.record(
                &graph,
                &Edge {
                    server: &format!("s{i}"),
                    ..edge(&api, &db, false)
                },
            );
        }
        let other = process(4, "late");
        assert!(!cache.record_between(&graph, &api, &other, &edge(&api, &other, false)));
        assert!(cache.record_between(&graph, &api, &db, &edge(&api, &db, false)));
    }
}
