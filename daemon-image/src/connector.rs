//! The CLI-facing gRPC service of the daemon: status, list, intercept create/remove (with the
//! engagement's `--to-pod` listeners), uninstall, log level and quit, each forwarded to the
//! manager with this daemon's session.

use crate::session::Session;
use protocol::connector::connector_server::Connector;
use protocol::connector::*;
use protocol::manager::*;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

pub struct ConnectorService {
    session: Arc<Session>,
    quit: mpsc::Sender<()>,
    /// The outbound part of the status (subnets, DNS).
    outbound: Arc<DaemonStatus>,
    /// How many cluster destinations the kernel forwards (`kernel_fwd.rs`).
    forwards: Arc<std::sync::atomic::AtomicU32>,
    /// The `--to-pod` ports of this daemon's engagements (`daemon-image/src/to_pod.rs`).
    to_pod: crate::to_pod::Listeners,
}

impl ConnectorService {
    pub fn new(
        session: Arc<Session>,
        quit: mpsc::Sender<()>,
        outbound: Arc<DaemonStatus>,
        forwards: Arc<std::sync::atomic::AtomicU32>,
    ) -> Self {
        ConnectorService {
            session,
            quit,
            outbound,
            forwards,
            to_pod: Default::default(),
        }
    }
}

#[tonic::async_trait]
impl Connector for ConnectorService {
    async fn version(&self, _: Request<Empty>) -> Result<Response<VersionInfo>, Status> {
        Ok(Response::new(VersionInfo {
            version: protocol::VERSION.into(),
            name: "daemon".into(),
        }))
    }

    async fn status(&self, _: Request<Empty>) -> Result<Response<DaemonStatus>, Status> {
        let s = &self.session;
        let manager = s.client.clone().version(Empty {}).await;
        Ok(Response::new(DaemonStatus {
            version: protocol::VERSION.into(),
            connection: s.cfg.connection.clone(),
            status: "Connected".into(),
            // A connection made through a kubeconfig is a Kubernetes connection, whatever
            // provider the manager behind the port-forward uses.
            cluster_type: if s.cfg.kubeconfig.is_some() {
                ClusterType::Kubernetes as i32
            } else {
                s.cluster.cluster_type
            },
            server: if s.cfg.server.is_empty() {
                s.cluster.server.clone()
            } else {
                s.cfg.server.clone()
            },
            context: s.cfg.context.clone(),
            namespace: s.cfg.namespace.clone(),
            manager_namespace: s.cfg.manager_namespace.clone(),
            container_network: format!("container:tp-{}", s.cfg.connection),
            intercepts: s.intercepts.borrow().clone(),
            manager_connected: manager.is_ok(),
            manager_version: manager.map(|m| m.into_inner().version).unwrap_or_default(),
            agent_image: s.cluster.agent_image.clone(),
            dns: self.outbound.dns.clone(),
            subnets: self.outbound.subnets.clone(),
            outbound_tcp: self.outbound.outbound_tcp,
            kernel_forwards: self.forwards.load(std::sync::atomic::Ordering::Relaxed),
            authenticated: s.bearer.is_set(),
            session: Some(s.session()),
        }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<WorkloadList>, Status> {
        let mut ns = req.into_inner().namespace;
        if ns.is_empty() {
            ns = self.session.cfg.namespace.clone();
        }
        self.session
            .client
            .clone()
            .list_workloads(ListWorkloadsRequest {
                session: Some(self.session.session()),
                namespace: ns,
            })
            .await
    }

    async fn create_intercept(
        &self,
        req: Request<InterceptSpec>,
    ) -> Result<Response<InterceptInfo>, Status> {
        let mut spec = req.into_inner();
        if spec.namespace.is_empty() {
            spec.namespace = self.session.cfg.namespace.clone();
        }
        if spec.target_host.is_empty() {
            spec.target_host = "127.0.0.1".into();
        }
        // The ports are taken before the engagement exists, and closed again if it fails.
        let bound = crate::to_pod::bind(&spec.to_pod)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let info = self
            .session
            .client
            .clone()
            .create_intercept(CreateInterceptRequest {
                session: Some(self.session.session()),
                spec: Some(spec.clone()),
            })
            .await?;
        let created = info.get_ref().spec.clone().unwrap_or(spec);
        self.to_pod.start(&self.session, &created.name, bound);
        self.session.specs.lock().unwrap().push(created);
        // Our own view is current at once, not only when the watch stream catches up.
        let added = info.get_ref().clone();
        self.session.intercepts.send_modify(|v| {
            v.retain(|i| i.id != added.id);
            v.push(added);
        });
        Ok(info)
    }

    async fn remove_intercept(
        &self,
        req: Request<LeaveRequest>,
    ) -> Result<Response<Empty>, Status> {
        let name = req.into_inner().name;
        self.session
            .specs
            .lock()
            .unwrap()
            .retain(|s| s.name != name);
        self.to_pod.stop(&name);
        let r = self
            .session
            .client
            .clone()
            .remove_intercept(RemoveInterceptRequest {
                session: Some(self.session.session()),
                name: name.clone(),
            })
            .await?;
        // Our own view is current at once (a new intercept may reuse the port right away),
        // not only when the watch stream catches up.
        self.session
            .intercepts
            .send_modify(|v| v.retain(|i| i.spec.as_ref().is_none_or(|s| s.name != name)));
        Ok(r)
    }

    async fn uninstall(&self, req: Request<UninstallRequest>) -> Result<Response<Empty>, Status> {
        let mut req = req.into_inner();
        req.session = Some(self.session.session());
        if req.namespace.is_empty() {
            req.namespace = self.session.cfg.namespace.clone();
        }
        self.session.client.clone().uninstall(req).await
    }

    async fn set_log_level(&self, req: Request<LogLevelChange>) -> Result<Response<Empty>, Status> {
        let req = req.into_inner();
        let duration = (req.duration_ms > 0)
            .then(|| std::time::Duration::from_millis(u64::from(req.duration_ms)));
        if !req.remote_only {
            protocol::loglevel::set(req.level(), duration)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        if !req.local_only {
            self.session
                .client
                .clone()
                .set_log_level(LogLevelRequest {
                    session: Some(self.session.session()),
                    level: req.level,
                    duration_ms: req.duration_ms,
                })
                .await?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn quit(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.session.depart().await;
        let _ = self.quit.try_send(());
        Ok(Response::new(Empty {}))
    }
}
