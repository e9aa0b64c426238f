//! `votegate decode [FILE]`: reads a batch payload (postcard or JSON) from FILE or stdin and
//! prints it as JSON.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::uplink::payload;

/// Decodes and prints.
pub fn decode(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut bytes = Vec::new();
    match file {
        Some(path) => {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
        }
    }
    let source = file.map_or("stdin".to_string(), |p| p.display().to_string());
    let batch = payload::decode(&bytes).context(source)?;
    println!("{}", serde_json::to_string_pretty(&batch)?);
    Ok(ExitCode::SUCCESS)
}
