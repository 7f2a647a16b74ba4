//! Reading what older formats wrote. Each step upgrades the JSON of a
//! snapshot or a log entry by one format, before it is decoded into
//! today's types; [`Store::open`](crate::Store::open) then writes the
//! state back in the current format.
//!
//! - 0 → 1: the same shapes (format 1 only added the mark).
//! - 1 → 2: a service's spec was a JSON document inside a string (in
//!   `services.*.spec`, `services.*.previous[1]` and the `put_service`
//!   command); it is now the typed spec itself.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::StoreError;

/// Decodes a snapshot or log entry written in `format`.
pub(crate) fn decode<T: DeserializeOwned>(
    format: u32,
    bytes: &[u8],
    what: &str,
    upgrade: fn(&mut Value) -> Result<(), String>,
) -> Result<T, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("{what}: {e}"));
    if format >= crate::FORMAT {
        return serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()));
    }
    let mut v: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if format < 2 {
        upgrade(&mut v).map_err(corrupt)?;
    }
    serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))
}

/// 1 → 2 for a snapshot (`{index, state}`).
pub(crate) fn snapshot_1_to_2(v: &mut Value) -> Result<(), String> {
    let Some(services) = v
        .get_mut("state")
        .and_then(|s| s.get_mut("services"))
        .and_then(Value::as_object_mut)
    else {
        return Ok(());
    };
    for (name, rec) in services.iter_mut() {
        if let Some(spec) = rec.get_mut("spec") {
            unstring(spec).map_err(|e| format!("service {name}: {e}"))?;
        }
        if let Some(Value::Array(prev)) = rec.get_mut("previous") {
            if let Some(spec) = prev.get_mut(1) {
                unstring(spec).map_err(|e| format!("service {name}, previous spec: {e}"))?;
            }
        }
    }
    Ok(())
}

/// 1 → 2 for a log entry (a command).
pub(crate) fn command_1_to_2(v: &mut Value) -> Result<(), String> {
    if v.get("op").and_then(Value::as_str) == Some("put_service") {
        if let Some(spec) = v.get_mut("spec") {
            unstring(spec)?;
        }
    }
    Ok(())
}

/// A spec kept as a JSON string becomes the document it held.
fn unstring(spec: &mut Value) -> Result<(), String> {
    if let Value::String(s) = spec {
        *spec = serde_json::from_str(s).map_err(|e| format!("spec is not JSON: {e}"))?;
    }
    Ok(())
}
