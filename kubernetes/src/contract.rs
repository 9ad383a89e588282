//! What an installation (the chart in `charts/traffic-manager`) must give the Kubernetes
//! traffic-manager, as data: the environment variables it reads ([`ENV`]), the RBAC rules its
//! API calls need ([`RBAC`]), and where its webhook listens ([`WEBHOOK_SERVICE_PORT`] with
//! [`super::webhook::PATH`] and [`super::startup::MANAGER_SERVICE`]). The chart's tests
//! (`tests/tests/helm_chart.rs`) render the chart and check it against these tables, and this
//! module's tests check the tables against the code that reads the environment, so neither side
//! can drift alone.

/// The port of the `https` port of Service `traffic-manager` that the webhook configuration
/// calls (the Service maps it to the container's `TP_WEBHOOK_PORT`).
pub const WEBHOOK_SERVICE_PORT: u16 = 443;

/// How long the manager waits for the first list of every watched kind at start; its gRPC port
/// (the chart's readiness and liveness port) opens only afterwards, so a probe must allow it.
pub const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// An environment variable the Kubernetes manager process reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    /// Whether the manager refuses to start without it.
    pub required: bool,
    /// Who reads it.
    pub reader: &'static str,
}

const fn env(name: &'static str, required: bool, reader: &'static str) -> EnvVar {
    EnvVar {
        name,
        required,
        reader,
    }
}

/// Every variable the manager process reads on Kubernetes (KUBERNETES.md, "Process").
pub const ENV: &[EnvVar] = &[
    // The multi-call binary's `traffic-manager` role picks the provider with it.
    env("TP_CLUSTER_TYPE", true, "cli roles::traffic_manager"),
    env("TP_MANAGER_NAMESPACE", true, "startup::Settings"),
    env("TP_AGENT_IMAGE", true, "startup::Settings"),
    env("TP_GRPC_PORT", false, "startup::Settings"),
    env("TP_TUNNEL_PORT", false, "startup::Settings"),
    env("TP_WEBHOOK_PORT", false, "startup::Settings"),
    env("TP_WEBHOOK_CERT", false, "startup::Settings"),
    env("TP_WEBHOOK_KEY", false, "startup::Settings"),
    env("TP_MANAGER_HOST", false, "startup::Settings"),
    env("TP_AGENT_INJECT_POLICY", false, "startup::Settings"),
    env("TP_MANAGED_NAMESPACES", false, "startup::Settings"),
    env("TP_ROLLOUT_TIMEOUT", false, "startup::Settings"),
    env("TP_AGENT_TIMEOUT", false, "startup::Settings"),
    env("TP_AGENT_IMAGE_PULL_POLICY", false, "startup::Settings"),
    env(
        super::startup::ENV_AGENT_LOG_LEVEL,
        false,
        "startup::Settings",
    ),
    env(
        super::startup::ENV_AGENT_RESOURCES,
        false,
        "startup::Settings",
    ),
    env(
        super::startup::ENV_AGENT_PULL_SECRETS,
        false,
        "startup::Settings",
    ),
    env(
        super::startup::ENV_AGENT_SECURITY_CONTEXT,
        false,
        "startup::Settings",
    ),
    env(
        super::cidr::ENV_CLUSTER_DOMAIN,
        false,
        "cidr::cluster_domain",
    ),
    env(
        manager::personal::ENV_TEAM_MODE,
        false,
        "personal::team_mode_from_env",
    ),
    // The tracing filter of the binary.
    env("RUST_LOG", false, "cli main (tracing)"),
];

/// Where a rule must be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace the manager serves: a ClusterRole, or (namespaced install,
    /// `TP_MANAGED_NAMESPACES`) a Role in each managed namespace.
    Served,
    /// In the manager's own namespace (a ClusterRole covers it too).
    Own,
    /// Only with cluster-wide RBAC (cluster-scoped resources or the namespace list); a
    /// namespaced install does without: `optional` rules degrade a feature, the others are only
    /// used when `TP_MANAGED_NAMESPACES` is empty.
    ClusterWide { optional: bool },
}

/// One RBAC rule the manager's API calls need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `""` is the core group.
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Which calls need it.
    pub why: &'static str,
}

const fn rule(
    api_group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    scope: Scope,
    why: &'static str,
) -> Rule {
    Rule {
        api_group,
        resource,
        verbs,
        scope,
        why,
    }
}

const WATCH: &[&str] = &["get", "list", "watch"];

/// Every RBAC rule the manager needs (KUBERNETES.md, "RBAC the manager needs").
pub const RBAC: &[Rule] = &[
    rule("apps", "deployments", &["get", "list", "watch", "patch"], Scope::Served,
        "reflector; rollout annotation on the pod template"),
    rule("apps", "replicasets", WATCH, Scope::Served, "reflector"),
    rule("apps", "statefulsets", &["get", "list", "watch", "patch"], Scope::Served,
        "reflector; rollout annotation on the pod template"),
    rule("", "pods", &["get", "list", "watch", "delete"], Scope::Served,
        "reflector; bare ReplicaSets and OnDelete StatefulSets roll out by deleting pods"),
    rule("", "services", &["get", "list", "watch", "create"], Scope::Served,
        "reflector; the service-CIDR probe (dryRun=All create) in the client's namespace"),
    rule("", "configmaps", &["get", "list", "watch", "create", "patch"], Scope::Served,
        "reflector and writes of ConfigMap telepresence-agents"),
    rule("", "secrets", &["get", "create", "patch"], Scope::Served,
        "Secret traffic-agent-auth: the agent token injected agents read (auth.rs)"),
    rule("", "secrets", &["get", "create", "patch"], Scope::Own,
        "Secret traffic-manager-auth: the manager's credentials, rotated at start (auth.rs)"),
    rule("", "services", &["get", "create"], Scope::Own,
        "Service traffic-manager's ClusterIP for agents; the service-CIDR probe without a client namespace"),
    rule("", "namespaces", WATCH, Scope::ClusterWide { optional: false },
        "reflector of namespaces when TP_MANAGED_NAMESPACES is empty"),
    rule("", "nodes", &["list"], Scope::ClusterWide { optional: true },
        "pod CIDRs from the nodes' spec.podCIDRs (else from pod IPs)"),
    rule("networking.k8s.io", "servicecidrs", &["list"], Scope::ClusterWide { optional: true },
        "service CIDRs on Kubernetes >= 1.33 (else the dry-run probe)"),
];

/// Whether the rules in `RBAC` of one of `scopes` need `verb` on `group`/`resource`.
pub fn needed(group: &str, resource: &str, verb: &str, scopes: &[Scope]) -> bool {
    RBAC.iter().any(|r| {
        scopes.contains(&r.scope)
            && r.api_group == group
            && r.resource == resource
            && r.verbs.contains(&verb)
    })
}

#[cfg(test)]
mod tests {
    use super::super::startup::Settings;
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    /// The table lists exactly what `Settings` asks for (plus the readers outside it).
    #[test]
    fn env_table_is_what_settings_reads() {
        let asked = RefCell::new(BTreeSet::new());
        let s = Settings::from_lookup(|k| {
            asked.borrow_mut().insert(k.to_string());
            match k {
                "TP_MANAGER_NAMESPACE" => Some("tm".into()),
                "TP_AGENT_IMAGE" => Some("i:1".into()),
                _ => None,
            }
        });
        assert!(s.is_ok());
        let table: BTreeSet<String> = ENV
            .iter()
            .filter(|e| e.reader == "startup::Settings")
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(asked.into_inner(), table);
        // Required ones really are required.
        for e in ENV.iter().filter(|e| e.reader == "startup::Settings") {
            let r = Settings::from_lookup(|k| match k {
                _ if k == e.name => None,
                "TP_MANAGER_NAMESPACE" => Some("tm".into()),
                "TP_AGENT_IMAGE" => Some("i:1".into()),
                _ => None,
            });
            assert_eq!(r.is_err(), e.required, "{}", e.name);
        }
        let names: BTreeSet<&str> = ENV.iter().map(|e| e.name).collect();
        assert_eq!(names.len(), ENV.len(), "duplicate names");
    }

    #[test]
    fn rbac_table_is_consistent() {
        for r in RBAC {
            assert!(!r.verbs.is_empty() && !r.why.is_empty(), "{r:?}");
        }
        assert!(needed("apps", "deployments", "patch", &[Scope::Served]));
        assert!(!needed("apps", "replicasets", "patch", &[Scope::Served]));
        assert!(needed("", "services", "get", &[Scope::Own]));
        assert!(!needed("", "nodes", "list", &[Scope::Served, Scope::Own]));
    }
}
