//! An in-memory [`Store`], for unit tests of the layers above core.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::identity::{ApiKeyRecord, QuotaRecord};
use crate::model::{Pool, Sandbox, SandboxStatus, Slot, SlotPhase, Template};
use crate::store::{SandboxFilter, Store, StoreError};

#[derive(Default)]
struct State {
    templates: BTreeMap<String, Template>,
    pools: BTreeMap<(String, String), Pool>,
    slots: BTreeMap<String, Slot>,
    sandboxes: BTreeMap<String, Sandbox>,
    api_keys: BTreeMap<String, ApiKeyRecord>,
    quotas: BTreeMap<String, QuotaRecord>,
}

/// In-memory store with the same semantics as the SQLite one (checked by the conformance suite).
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn create_template(&self, t: &Template) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if st.templates.contains_key(&t.name) {
            return Err(StoreError::Conflict(format!("template {:?} exists", t.name)));
        }
        st.templates.insert(t.name.clone(), t.clone());
        Ok(())
    }
    fn update_template(&self, t: &Template, expected_rv: u64) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        let cur = st.templates.get(&t.name).ok_or_else(|| StoreError::NotFound(t.name.clone()))?;
        if cur.resource_version != expected_rv {
            return Err(StoreError::Conflict(format!("template {:?} changed", t.name)));
        }
        st.templates.insert(t.name.clone(), t.clone());
        Ok(())
    }
    fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        Ok(self.state.lock().templates.get(name).cloned())
    }
    fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        Ok(self.state.lock().templates.values().cloned().collect())
    }
    fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.state.lock().templates.remove(name).is_some())
    }
    fn create_pool(&self, p: &Pool) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        let key = (p.namespace.clone(), p.name.clone());
        if st.pools.contains_key(&key) {
            return Err(StoreError::Conflict(format!("pool {:?} exists", p.name)));
        }
        st.pools.insert(key, p.clone());
        Ok(())
    }
    fn update_pool(&self, p: &Pool, expected_rv: u64) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        let key = (p.namespace.clone(), p.name.clone());
        let cur = st.pools.get(&key).ok_or_else(|| StoreError::NotFound(p.name.clone()))?;
        if cur.resource_version != expected_rv {
            return Err(StoreError::Conflict(format!("pool {:?} changed", p.name)));
        }
        st.pools.insert(key, p.clone());
        Ok(())
    }
    fn get_pool(&self, namespace: &str, name: &str) -> Result<Option<Pool>, StoreError> {
        Ok(self.state.lock().pools.get(&(namespace.to_string(), name.to_string())).cloned())
    }
    fn list_pools(&self, namespace: Option<&str>) -> Result<Vec<Pool>, StoreError> {
        Ok(self.state.lock().pools.values().filter(|p| namespace.is_none_or(|n| n == p.namespace)).cloned().collect())
    }
    fn delete_pool(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.state.lock().pools.remove(&(namespace.to_string(), name.to_string())).is_some())
    }
    fn put_slot(&self, s: &Slot) -> Result<(), StoreError> {
        self.state.lock().slots.insert(s.slot_id.clone(), s.clone());
        Ok(())
    }
    fn get_slot(&self, slot_id: &str) -> Result<Option<Slot>, StoreError> {
        Ok(self.state.lock().slots.get(slot_id).cloned())
    }
    fn list_slots(&self) -> Result<Vec<Slot>, StoreError> {
        Ok(self.state.lock().slots.values().cloned().collect())
    }
    fn delete_slot(&self, slot_id: &str) -> Result<(), StoreError> {
        self.state.lock().slots.remove(slot_id);
        Ok(())
    }
    fn claim(&self, slot: &Slot, expected: SlotPhase, sandbox: &Sandbox) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        let cur = st.slots.get(&slot.slot_id).ok_or_else(|| StoreError::NotFound(slot.slot_id.clone()))?;
        if cur.phase != expected {
            return Err(StoreError::Conflict(format!("slot {} is {}", slot.slot_id, cur.phase.as_str())));
        }
        if st.sandboxes.contains_key(&sandbox.sandbox_id) {
            return Err(StoreError::Conflict(format!("sandbox {} exists", sandbox.sandbox_id)));
        }
        st.slots.insert(slot.slot_id.clone(), slot.clone());
        st.sandboxes.insert(sandbox.sandbox_id.clone(), sandbox.clone());
        Ok(())
    }
    fn put_slot_and_sandbox(&self, slot: &Slot, sandbox: &Sandbox) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        st.slots.insert(slot.slot_id.clone(), slot.clone());
        st.sandboxes.insert(sandbox.sandbox_id.clone(), sandbox.clone());
        Ok(())
    }
    fn put_sandbox(&self, s: &Sandbox) -> Result<(), StoreError> {
        self.state.lock().sandboxes.insert(s.sandbox_id.clone(), s.clone());
        Ok(())
    }
    fn get_sandbox(&self, sandbox_id: &str) -> Result<Option<Sandbox>, StoreError> {
        Ok(self.state.lock().sandboxes.get(sandbox_id).cloned())
    }
    fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<(Vec<Sandbox>, u64), StoreError> {
        let st = self.state.lock();
        let mut all: Vec<Sandbox> = st.sandboxes.values().filter(|s| filter.matches(s)).cloned().collect();
        all.sort_by(|a, b| b.claimed_at.cmp(&a.claimed_at).then_with(|| a.sandbox_id.cmp(&b.sandbox_id)));
        let total = all.len() as u64;
        let it = all.into_iter().skip(filter.offset as usize);
        let items = if filter.limit == 0 { it.collect() } else { it.take(filter.limit as usize).collect() };
        Ok((items, total))
    }
    fn count_sandboxes(&self, namespace: Option<&str>) -> Result<BTreeMap<SandboxStatus, u64>, StoreError> {
        let st = self.state.lock();
        let mut out = BTreeMap::new();
        for s in st.sandboxes.values().filter(|s| namespace.is_none_or(|n| n == s.namespace)) {
            *out.entry(s.status).or_insert(0) += 1;
        }
        Ok(out)
    }
    fn prune_history(&self, before: &str) -> Result<u64, StoreError> {
        let mut st = self.state.lock();
        let n = st.sandboxes.len();
        st.sandboxes
            .retain(|_, s| !(s.status.is_terminal() && s.terminated_at.as_deref().unwrap_or(&s.claimed_at) < before));
        Ok((n - st.sandboxes.len()) as u64)
    }
    fn create_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if st.api_keys.contains_key(&k.key_id) {
            return Err(StoreError::Conflict(format!("api key {} exists", k.key_id)));
        }
        st.api_keys.insert(k.key_id.clone(), k.clone());
        Ok(())
    }
    fn put_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        self.state.lock().api_keys.insert(k.key_id.clone(), k.clone());
        Ok(())
    }
    fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.state.lock().api_keys.get(key_id).cloned())
    }
    fn find_api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.state.lock().api_keys.values().find(|k| k.token_hash == token_hash).cloned())
    }
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut v: Vec<_> = self.state.lock().api_keys.values().cloned().collect();
        v.sort_by(|a, b| (&a.team, &a.user, &a.issued_at, &a.key_id).cmp(&(&b.team, &b.user, &b.issued_at, &b.key_id)));
        Ok(v)
    }
    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        Ok(self.state.lock().api_keys.remove(key_id).is_some())
    }
    fn create_quota(&self, q: &QuotaRecord) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if st.quotas.contains_key(&q.name) {
            return Err(StoreError::Conflict(format!("quota {:?} exists", q.name)));
        }
        st.quotas.insert(q.name.clone(), q.clone());
        Ok(())
    }
    fn update_quota(&self, q: &QuotaRecord, expected_rv: u64) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        let cur = st.quotas.get(&q.name).ok_or_else(|| StoreError::NotFound(format!("quota {:?}", q.name)))?;
        if cur.resource_version != expected_rv {
            return Err(StoreError::Conflict(format!("quota {:?} changed", q.name)));
        }
        st.quotas.insert(q.name.clone(), q.clone());
        Ok(())
    }
    fn get_quota(&self, name: &str) -> Result<Option<QuotaRecord>, StoreError> {
        Ok(self.state.lock().quotas.get(name).cloned())
    }
    fn list_quotas(&self) -> Result<Vec<QuotaRecord>, StoreError> {
        let mut v: Vec<_> = self.state.lock().quotas.values().cloned().collect();
        v.sort_by(|a, b| (&a.quota_url, &a.name).cmp(&(&b.quota_url, &b.name)));
        Ok(v)
    }
    fn delete_quota(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.state.lock().quotas.remove(name).is_some())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_conformance_suite() {
        crate::store::conformance::run_all(&super::MemoryStore::new());
    }
}
