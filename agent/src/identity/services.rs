//! Kubernetes Services by address, to name a peer that is not on this host: a call to a
//! Service's cluster IP (kube-proxy translates it on the way out, so the caller's socket
//! keeps that address), to one of its external IPs or to its load balancer's address is a
//! call to that Service. The service graph names such a server by the Service's name.
//!
//! The name is the Service's own (`metadata.name`), without its namespace: a Service
//! usually has the name of the workload behind it, which is also what sonde calls that
//! workload's pods (see `identity::k8s`), so an edge to a Service on another node meets
//! the node that node's sonde draws for those pods.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::identity::k8s::{ApiConfig, Watched};

/// The cluster's Services by each address that reaches them.
#[derive(Default)]
pub struct ServiceIndex {
    by_address: HashMap<IpAddr, Arc<str>>,
    /// The addresses of each Service uid, to forget them when it changes or goes.
    by_uid: HashMap<String, Vec<IpAddr>>,
}

pub type SharedServiceIndex = Arc<RwLock<ServiceIndex>>;

impl ServiceIndex {
    /// The name of the Service at `address` (an IPv4 address mapped into IPv6 is the same
    /// address).
    pub fn name_at(&self, address: IpAddr) -> Option<Arc<str>> {
        self.by_address.get(&address.to_canonical()).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    fn remove_uid(&mut self, uid: &str) {
        for address in self.by_uid.remove(uid).unwrap_or_default() {
            self.by_address.remove(&address);
        }
    }
}

impl Watched for ServiceIndex {
    const PURPOSE: &'static str = "Service names";
    const THREAD: &'static str = "sonde-k8s-svcs";

    fn path(_: &ApiConfig) -> String {
        "/api/v1/services".to_string()
    }

    /// A JSON `v1.Service`.
    fn upsert(&mut self, service: &Value) {
        let uid = service["metadata"]["uid"].as_str().unwrap_or_default();
        self.remove_uid(uid);
        let Some(name) = service["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        let name: Arc<str> = Arc::from(name);
        let addresses = addresses_of(service);
        for address in &addresses {
            self.by_address.insert(*address, name.clone());
        }
        self.by_uid.insert(uid.to_string(), addresses);
    }

    fn remove(&mut self, service: &Value) {
        self.remove_uid(service["metadata"]["uid"].as_str().unwrap_or_default());
    }
}

/// Every address that reaches a Service: its cluster IPs (none for a headless Service,
/// whose `clusterIP` is `None`), its external IPs and its load balancer's IPs.
fn addresses_of(service: &Value) -> Vec<IpAddr> {
    let spec = &service["spec"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut texts = strings(&spec["clusterIPs"]);
    texts.extend(spec["clusterIP"].as_str().map(str::to_string));
    texts.extend(strings(&spec["externalIPs"]));
    if let Some(ingress) = service["status"]["loadBalancer"]["ingress"].as_array() {
        texts.extend(
            ingress
                .iter()
                .filter_map(|i| i["ip"].as_str().map(str::to_string)),
        );
    }
    let mut addresses: Vec<IpAddr> = texts
        .iter()
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .map(|a| a.to_canonical())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::k8s::apply_watch_events;
    use serde_json::json;

    fn service(uid: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "shop", "uid": uid}, "spec": spec})
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_address_of_a_service_gives_its_name() {
        let mut index = ServiceIndex::default();
        index.upsert(&service(
            "u1",
            "checkout",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                   "externalIPs": ["203.0.113.7"]}),
        ));
        let mut lb = service("u2", "gateway", json!({"type": "LoadBalancer"}));
        lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}, {"hostname": "x.example"}]}});
        index.upsert(&lb);
        index.upsert(&service("u3", "ledger", json!({"clusterIP": "None"})));
        for (address, name) in [
            ("10.96.0.10", "checkout"),
            ("::ffff:10.96.0.10", "checkout"),
            ("fd00::10", "checkout"),
            ("203.0.113.7", "checkout"),
            ("198.51.100.4", "gateway"),
        ] {
            assert_eq!(
                index.name_at(ip(address)).as_deref(),
                Some(name),
                "{address}"
            );
        }
        assert_eq!(index.len(), 4, "a headless Service has no address");
        assert_eq!(index.name_at(ip("10.96.0.11")), None);
    }

    #[test]
    fn a_watch_moves_and_forgets_addresses() {
        let index = SharedServiceIndex::default();
        index.write().unwrap().replace_all(&[service(
            "u1",
            "checkout",
            json!({"clusterIP": "10.96.0.10"}),
        )]);
        let events = [
            json!({"type": "ADDED", "object": service("u2", "search", json!({"clusterIP": "10.96.0.20"}))}),
            // A cluster IP never changes, but external IPs come and go.
            json!({"type": "MODIFIED", "object": service("u1", "checkout", json!({"clusterIP": "10.96.0.10", "externalIPs": ["203.0.113.9"]}))}),
            json!({"type": "MODIFIED", "object": service("u1", "checkout", json!({"clusterIP": "10.96.0.10", "externalIPs": ["203.0.113.10"]}))}),
            json!({"type": "DELETED", "object": service("u2", "search", json!({"clusterIP": "10.96.0.20"}))}),
        ];
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let version = apply_watch_events(body.as_bytes(), "7", &index).unwrap();
        assert_eq!(version.as_deref(), Some("7"));
        let index = index.read().unwrap();
        assert_eq!(index.name_at(ip("10.96.0.10")).as_deref(), Some("checkout"));
        assert_eq!(
            index.name_at(ip("203.0.113.10")).as_deref(),
            Some("checkout")
        );
        assert_eq!(index.name_at(ip("203.0.113.9")), None, "an address it lost");
        assert_eq!(index.name_at(ip("10.96.0.20")), None, "a deleted Service");
        assert_eq!(index.len(), 2);
    }
}
