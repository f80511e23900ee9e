//! An informer cache of every slot Pod (label `agentbox.dev/pool`, all namespaces), kept current
//! by a watch. With it, a claim reads the Pod's phase and `resourceVersion` from memory and sends
//! only the compare-and-set patch (one round trip instead of two); a stale cache entry costs a
//! conflict (the API server refuses the patch), never a double claim.

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::labels;

/// The cache and the task that fills it: spawn the future (it runs until dropped; watch errors are
/// retried with backoff and logged). The store is empty until the first list completed
/// ([`Store::wait_until_ready`]).
pub fn pod_informer(client: Client) -> (Store<Pod>, impl Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let api: Api<Pod> = Api::all(client);
    let stream = watcher(api, watcher::Config::default().labels(labels::POOL)).default_backoff();
    let task = async move {
        reflector::reflector(writer, stream)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "slot pod watch failed; retrying");
                }
            })
            .await;
    };
    (reader, task)
}
