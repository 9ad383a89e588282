//! Applying rendered objects with server-side apply (field manager `telepresence`, forced),
//! the release record (ConfigMap `telepresence-release` in the manager namespace), deletion
//! on uninstall, and waiting for the manager Deployment with progress output.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Field manager of every apply.
pub const FIELD_MANAGER: &str = "telepresence";
/// The release record's name.
pub const RELEASE_CONFIGMAP: &str = "telepresence-release";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}: kind {1} is not one the chart may contain")]
    UnknownKind(String, String),
    #[error("{action} {kind} {name}: {err}")]
    Api {
        action: &'static str,
        kind: String,
        name: String,
        err: String,
    },
    #[error("the release record {0} is unreadable: {1}")]
    Record(String, String),
    #[error("timed out after {0}s waiting for Deployment traffic-manager in namespace {1}: {2}")]
    Timeout(u64, String, String),
}

/// One object the release owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn of(obj: &Value) -> Self {
        ObjectRef {
            api_version: obj["apiVersion"].as_str().unwrap_or_default().into(),
            kind: obj["kind"].as_str().unwrap_or_default().into(),
            namespace: obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .into(),
            name: obj["metadata"]["name"].as_str().unwrap_or_default().into(),
        }
    }
}

/// (plural, namespaced) of the kinds the chart contains.
fn resource_of(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Secret" => ("secrets", true),
        "ConfigMap" => ("configmaps", true),
        "Service" => ("services", true),
        "Deployment" => ("deployments", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "MutatingWebhookConfiguration" => ("mutatingwebhookconfigurations", false),
        _ => return None,
    })
}

fn api_for(client: &kube::Client, r: &ObjectRef) -> Result<Api<DynamicObject>, ApplyError> {
    let (plural, namespaced) = resource_of(&r.kind)
        .ok_or_else(|| ApplyError::UnknownKind(r.name.clone(), r.kind.clone()))?;
    let (group, version) = match r.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", r.api_version.as_str()),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &r.kind), plural);
    Ok(if namespaced {
        Api::namespaced_with(client.clone(), &r.namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    })
}

/// Server-side applies one object.
pub async fn apply(client: &kube::Client, obj: &Value) -> Result<(), ApplyError> {
    let r = ObjectRef::of(obj);
    let api = api_for(client, &r)?;
    api.patch(
        &r.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| ApplyError::Api {
        action: "applying",
        kind: r.kind.clone(),
        name: r.name.clone(),
        err: e.to_string(),
    })?;
    Ok(())
}

/// Deletes one object; one that is already gone is fine.
pub async fn delete(client: &kube::Client, r: &ObjectRef) -> Result<bool, ApplyError> {
    let api = api_for(client, r)?;
    match api.delete(&r.name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(ApplyError::Api {
            action: "deleting",
            kind: r.kind.clone(),
            name: r.name.clone(),
            err: e.to_string(),
        }),
    }
}

/// What the release record holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub chart: String,
    pub revision: u32,
    /// The user-given values (never the generated TLS key).
    pub values: String,
    pub objects: Vec<ObjectRef>,
}

fn api_err<'a>(action: &'static str, name: &'a str) -> impl Fn(kube::Error) -> ApplyError + 'a {
    move |e| ApplyError::Api {
        action,
        kind: "ConfigMap".into(),
        name: name.into(),
        err: e.to_string(),
    }
}

/// Reads the release record (None when not installed).
pub async fn read_release(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<Release>, ApplyError> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let Some(cm) = api
        .get_opt(RELEASE_CONFIGMAP)
        .await
        .map_err(api_err("reading", RELEASE_CONFIGMAP))?
    else {
        return Ok(None);
    };
    let data = cm.data.unwrap_or_default();
    let get = |k: &str| data.get(k).cloned().unwrap_or_default();
    let objects = serde_json::from_str(&get("objects"))
        .map_err(|e| ApplyError::Record(RELEASE_CONFIGMAP.into(), e.to_string()))?;
    Ok(Some(Release {
        chart: get("chart"),
        revision: get("revision").parse().unwrap_or(0),
        values: get("values"),
        objects,
    }))
}

/// The release record as a ConfigMap (labels make it visible with
/// `kubectl get cm -l owner=telepresence`).
pub fn release_object(namespace: &str, r: &Release) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": RELEASE_CONFIGMAP,
            "namespace": namespace,
            "labels": {
                "owner": "telepresence",
                "name": super::chart::RELEASE_NAME,
                "status": "deployed",
                "version": r.revision.to_string(),
                (protocol::MANAGED_BY_LABEL): protocol::MANAGED_BY_VALUE,
            },
        },
        "data": {
            "chart": r.chart,
            "revision": r.revision.to_string(),
            "values": r.values,
            "objects": serde_json::to_string(&r.objects).unwrap_or_default(),
        },
    })
}

pub async fn write_release(
    client: &kube::Client,
    namespace: &str,
    r: &Release,
) -> Result<(), ApplyError> {
    apply(client, &release_object(namespace, r)).await
}

pub async fn delete_release(client: &kube::Client, namespace: &str) -> Result<(), ApplyError> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    match api
        .delete(RELEASE_CONFIGMAP, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err("deleting", RELEASE_CONFIGMAP)(e)),
    }
}

/// Whether a namespace exists.
pub async fn namespace_exists(client: &kube::Client, namespace: &str) -> Result<bool, ApplyError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.get_opt(namespace)
        .await
        .map(|n| n.is_some())
        .map_err(|e| ApplyError::Api {
            action: "reading",
            kind: "Namespace".into(),
            name: namespace.into(),
            err: e.to_string(),
        })
}

/// Creates a namespace (labelled as ours).
pub async fn create_namespace(client: &kube::Client, namespace: &str) -> Result<(), ApplyError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": namespace, "labels": {(protocol::MANAGED_BY_LABEL): protocol::MANAGED_BY_VALUE}}
    }))
    .expect("namespace object");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(ApplyError::Api {
            action: "creating",
            kind: "Namespace".into(),
            name: namespace.into(),
            err: e.to_string(),
        }),
    }
}

/// The state of the rollout in one line, and whether it is complete.
pub fn rollout_state(d: &k8s_openapi::api::apps::v1::Deployment) -> (String, bool) {
    let want = d.spec.replicas.unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = d.status.as_ref() else {
        return ("waiting for the deployment to be observed".into(), false);
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return (
            "waiting for the deployment spec update to be observed".into(),
            false,
        );
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    if updated < want {
        return (
            format!("{updated} of {want} updated replicas are available"),
            false,
        );
    }
    if total > updated {
        return (
            format!("{} old replicas are pending termination", total - updated),
            false,
        );
    }
    if available < updated {
        return (
            format!("{available} of {updated} updated replicas are available"),
            false,
        );
    }
    (format!("{available} of {want} replicas available"), true)
}

/// Why the manager's pods are not running yet (e.g. `ImagePullBackOff`), one clause per pod
/// with a waiting or terminated container; empty when none says.
pub fn pod_problems(pods: &[k8s_openapi::api::core::v1::Pod]) -> String {
    let mut out = Vec::new();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for c in statuses {
            let state = c.state.unwrap_or_default();
            let why = if let Some(w) = state.waiting {
                w.reason.map(|r| match w.message {
                    Some(m) if !m.is_empty() => format!("{r}: {m}"),
                    _ => r,
                })
            } else if let Some(t) = state.terminated {
                Some(format!(
                    "terminated ({})",
                    t.reason
                        .unwrap_or_else(|| format!("exit code {}", t.exit_code))
                ))
            } else {
                None
            };
            if let Some(why) = why.filter(|w| w != "ContainerCreating") {
                out.push(format!("pod {name}: {why}"));
            }
        }
    }
    out.join("; ")
}

/// Waits until the manager Deployment has rolled out, printing each new state.
pub async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ApplyError> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let mut state = match api.get_opt("traffic-manager").await {
            Ok(Some(d)) => rollout_state(&d),
            Ok(None) => ("the deployment does not exist (yet)".into(), false),
            Err(e) => (format!("cannot read the deployment: {e}"), false),
        };
        if !state.1 {
            let pods: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(client.clone(), namespace);
            if let Ok(list) = pods
                .list(&kube::api::ListParams::default().labels("app=traffic-manager"))
                .await
            {
                let why = pod_problems(&list.items);
                if !why.is_empty() {
                    state.0 = format!("{} ({why})", state.0);
                }
            }
        }
        if state.0 != last {
            progress(&format!(
                "Waiting for deployment traffic-manager: {}",
                state.0
            ));
            last = state.0.clone();
        }
        if state.1 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApplyError::Timeout(
                timeout.as_secs(),
                namespace.into(),
                last,
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_problems_name_the_reason() {
        let pods: Vec<k8s_openapi::api::core::v1::Pod> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "tm-1"}, "status": {"containerStatuses": [{
                "name": "traffic-manager", "image": "telepresence:t", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied for telepresence"}}}]}},
            {"metadata": {"name": "tm-2"}, "status": {"containerStatuses": [{
                "name": "traffic-manager", "image": "telepresence:t", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}},
            {"metadata": {"name": "tm-3"}, "status": {"containerStatuses": [{
                "name": "traffic-manager", "image": "telepresence:t", "imageID": "", "ready": false, "restartCount": 2,
                "state": {"terminated": {"exitCode": 1}}}]}},
        ]))
        .unwrap();
        assert_eq!(
            pod_problems(&pods),
            "pod tm-1: ErrImagePull: pull access denied for telepresence; pod tm-3: terminated (exit code 1)"
        );
        assert_eq!(pod_problems(&[]), "");
    }

    #[test]
    fn rollout_states() {
        let d = |spec: serde_json::Value,
                 status: serde_json::Value|
         -> k8s_openapi::api::apps::v1::Deployment {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "traffic-manager", "generation": 2},
                "spec": spec, "status": status}),
            )
            .unwrap()
        };
        let sel = serde_json::json!({"matchLabels": {"app": "traffic-manager"}});
        let tpl = serde_json::json!({"metadata": {"labels": {"app": "traffic-manager"}}});
        let spec = serde_json::json!({"replicas": 1, "selector": sel, "template": tpl});
        assert_eq!(
            rollout_state(&d(
                spec.clone(),
                serde_json::json!({"observedGeneration": 1})
            )),
            (
                "waiting for the deployment spec update to be observed".to_string(),
                false
            )
        );
        assert_eq!(
            rollout_state(&d(
                spec.clone(),
                serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1})
            )),
            ("1 old replicas are pending termination".to_string(), false)
        );
        assert_eq!(
            rollout_state(&d(
                spec,
                serde_json::json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1})
            )),
            ("1 of 1 replicas available".to_string(), true)
        );
    }
}
