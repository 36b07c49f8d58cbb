//! Reads a zone file from disk and hands its text to `zone-sim` for parsing.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use zone_sim::ZoneSpec;

/// The zone spec and the exact text it came from (the journal embeds the text).
pub struct LoadedZone {
    pub spec: Arc<ZoneSpec>,
    pub text: String,
    pub name: String,
}

pub fn load_zone(path: &Path) -> anyhow::Result<LoadedZone> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("cannot read zone file {name}: check the path (zone files live in assets/zones/, e.g. assets/zones/demo.toml)")
    })?;
    let spec = ZoneSpec::from_toml_str(&name, &text)?;
    Ok(LoadedZone {
        spec: Arc::new(spec),
        text,
        name,
    })
}
