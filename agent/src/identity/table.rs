//! The identities of the processes sonde meets, cached by pid, with the configured
//! service-name rules and the Kubernetes pod applied.
use std::collections::HashMap;
use std::sync::Arc;

use crate::identity::k8s::{PodMeta, SharedPodIndex};
use crate::identity::process::{listening_ports, read_process, read_start_time, ProcessInfo};
use crate::identity::selector::ServiceNames;

/// Caches identities by pid; an entry is re-checked against the start time whenever the
/// process opens a new connection, so a reused pid is never given a dead process's name.
#[derive(Default)]
pub struct ProcessTable {
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
    names: ServiceNames,
    pods: Option<SharedPodIndex>,
}

impl ProcessTable {
    pub fn new(names: ServiceNames, pods: Option<SharedPodIndex>) -> ProcessTable {
        ProcessTable {
            by_pid: HashMap::new(),
            names,
            pods,
        }
    }

    /// Identity of `pid`. `comm` (the kernel's command name) stands in for the executable
    /// name when /proc no longer has the process.
    pub fn get(&mut self, pid: u32, comm: &str, recheck: bool) -> Arc<ProcessInfo> {
        if let Some(p) = self.by_pid.get(&pid) {
            let same = !recheck || read_start_time(pid).is_none_or(|t| t == p.start_time);
            // A pod that was not listed yet when the process was first met may be now.
            let pod_pending = p.pod.is_none() && self.pod_of(p).is_some();
            if same && !pod_pending {
                return p.clone();
            }
        }
        let mut info = read_process(pid, comm);
        if let Some(pod) = self.pod_of(&info) {
            if !info.name_from_env {
                info.service_name = pod.service_name.clone();
            }
            info.pod = Some(pod);
        }
        self.apply_rules(&mut info);
        let info = Arc::new(info);
        if self.by_pid.len() > 100_000 {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, info.clone());
        info
    }

    /// Identity of `pid`, a child that `parent` forked to serve a connection the parent
    /// accepted. If the child is gone from /proc already (one that serves a single short
    /// request often is), it is named as its parent: a forked child that did not exec runs
    /// its parent's executable, with its environment and in its container. A child caught
    /// while exiting (its environment already unreadable) that runs its parent's executable
    /// is named as its parent too.
    pub fn get_forked(&mut self, pid: u32, parent: u32, comm: &str) -> Arc<ProcessInfo> {
        let own = self.get(pid, comm, true);
        if own.name_from_env || own.name_from_rule {
            return own;
        }
        let parent = self.get(parent, comm, true);
        let gone = own.exe_path.is_empty();
        if parent.exe_path.is_empty() || !(gone || own.exe_path == parent.exe_path) {
            return own;
        }
        let info = Arc::new(ProcessInfo {
            pid,
            start_time: own.start_time,
            ..(*parent).clone()
        });
        self.by_pid.insert(pid, info.clone());
        info
    }

    fn pod_of(&self, info: &ProcessInfo) -> Option<Arc<PodMeta>> {
        let index = self.pods.as_ref()?;
        let id = info.container_id.as_deref()?;
        index.read().unwrap_or_else(|e| e.into_inner()).get(id)
    }

    /// Applies the service-name rules: the first rule that matches the executable or
    /// container, or a port the process listens on, names it.
    fn apply_rules(&self, info: &mut ProcessInfo) {
        let ports = if self.names.has_port_rules() {
            listening_ports(info.pid)
        } else {
            Vec::new()
        };
        if let Some(name) = self.names.for_process(info, &ports) {
            info.service_name = name.to_string();
            info.name_from_rule = true;
        }
    }

    /// `pid` was seen serving on `port`: if a port rule names that port and no rule named
    /// the process yet (it may have listened only after sonde identified it), it takes
    /// that name from now on. Returns the identity to use.
    pub fn serving_on(&mut self, process: Arc<ProcessInfo>, port: u16) -> Arc<ProcessInfo> {
        if process.name_from_rule {
            return process;
        }
        let Some(name) = self.names.for_port(port) else {
            return process;
        };
        let mut renamed = (*process).clone();
        renamed.service_name = name.to_string();
        renamed.name_from_rule = true;
        let renamed = Arc::new(renamed);
        self.by_pid.insert(renamed.pid, renamed.clone());
        renamed
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Drops the identities no connection holds any more whose process has exited: under
    /// process churn (a process per request) the table would otherwise keep one per pid
    /// ever seen. A live process keeps its entry (it is re-checked at its next connection
    /// anyway). Returns how many were dropped.
    pub fn sweep(&mut self) -> usize {
        let before = self.by_pid.len();
        self.by_pid.retain(|pid, info| {
            Arc::strong_count(info) > 1 || std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        before - self.by_pid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_read() {
        let mut t = ProcessTable::default();
        let me = t.get(std::process::id(), "x", true);
        assert!(!me.exe_name.is_empty());
        assert!(me.start_time > 0);
        assert_eq!(t.get(u32::MAX - 1, "gone", true).exe_name, "gone");
    }

    #[test]
    fn exited_processes_no_connection_holds_are_swept() {
        let mut t = ProcessTable::default();
        let me = t.get(std::process::id(), "x", true);
        let gone_held = t.get(u32::MAX - 1, "gone", true);
        t.get(u32::MAX - 2, "gone", true);
        assert_eq!(t.len(), 3);
        // Only the exited process nothing holds goes.
        assert_eq!(t.sweep(), 1);
        drop(gone_held);
        drop(me);
        // Live: kept even when nothing holds it.
        assert_eq!(t.sweep(), 1);
        assert_eq!(t.len(), 1);
    }
}
