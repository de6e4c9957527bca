//! Who a connection belongs to: the process (/proc), its container and Kubernetes pod, the
//! service name, and the selectors that decide what is captured.
pub mod cluster;
pub mod k8s;
pub mod process;
pub mod selector;
pub mod services;
pub mod table;
