//! What sonde keeps from the Kubernetes API: the pods of this node (`k8s`) and the
//! cluster's Services (`services`), each listed and then watched by a thread of its own.
use crate::identity::k8s::{spawn, ApiConfig, SharedPodIndex};
use crate::identity::services::SharedServiceIndex;

/// The indexes kept from the API, shared with the threads that read them.
#[derive(Clone, Default)]
pub struct Cluster {
    pub pods: SharedPodIndex,
    pub services: SharedServiceIndex,
}

impl Cluster {
    /// Starts the threads that list and watch the pods of this node and the Services.
    pub fn watch(api: ApiConfig) -> Cluster {
        let cluster = Cluster::default();
        spawn(api.clone(), cluster.pods.clone());
        spawn(api, cluster.services.clone());
        cluster
    }
}
