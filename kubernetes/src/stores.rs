//! Reflector stores: one `kube::runtime` reflector per kind and watched scope (cluster-wide, or
//! one per namespace), with the default backoff, `managedFields` dropped before storing, and the
//! last watch error kept so a startup that cannot list says why.

use futures::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

use manager::provider::ProviderError;

/// The stores of one kind (one per watched namespace, or one cluster-wide) and the last error
/// their watches reported.
pub(crate) struct Watched<K: Resource<DynamicType = ()> + 'static> {
    stores: Vec<Store<K>>,
    what: &'static str,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub(crate) fn start(
        apis: Vec<Api<K>>,
        what: &'static str,
        wc: watcher::Config,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Self {
        let last_error = Arc::new(Mutex::new(None));
        let mut stores = Vec::new();
        for api in apis {
            let (reader, writer) = reflector::store();
            let errors = last_error.clone();
            // Managed fields are often half of an object and never read here.
            let events = watcher(api, wc.clone()).map_ok(|ev| {
                ev.modify(|o| {
                    o.meta_mut().managed_fields = None;
                })
            });
            let stream = reflector::reflector(writer, events).default_backoff();
            tasks.push(tokio::spawn(async move {
                stream
                    .for_each(|ev| {
                        if let Err(e) = ev {
                            tracing::debug!("watch of {what}: {e}");
                            *errors.lock().unwrap() = Some(e.to_string());
                        }
                        futures::future::ready(())
                    })
                    .await;
            }));
            stores.push(reader);
        }
        Watched {
            stores,
            what,
            last_error,
        }
    }

    pub(crate) async fn ready(&self, timeout: Duration) -> Result<(), ProviderError> {
        let all =
            futures::future::join_all(self.stores.iter().map(reflector::Store::wait_until_ready));
        match tokio::time::timeout(timeout, all).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ProviderError::Api(format!(
                "the Kubernetes API did not list {} within {}s{}",
                self.what,
                timeout.as_secs(),
                match self.last_error.lock().unwrap().as_ref() {
                    Some(e) => format!(": {e}"),
                    None => String::new(),
                }
            ))),
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<K>> {
        self.stores
            .iter()
            .flat_map(reflector::Store::state)
            .collect()
    }

    pub(crate) fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.all()
            .into_iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(ns))
            .collect()
    }
}

/// One cluster-wide API, or one per namespace.
pub(crate) fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}
