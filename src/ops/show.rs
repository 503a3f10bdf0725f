//! `attrsync show PLANFILE`: renders a saved plan again, in any format, without the config, the
//! snapshot or the server (Terraform's `show`).

use std::path::Path;

use anyhow::{Context as _, Result};

use super::plan::PlanFormat;
use crate::plan::{self, TextStyle};

/// Reads the plan saved at `path` by `plan --out` and renders it as `format`.
pub fn show(ctx: &super::Globals, path: &Path, format: PlanFormat) -> Result<String> {
    let style: TextStyle = ctx.text_style();
    let text = super::read_named_file(path).context("cannot read the plan file")?;
    let saved =
        plan::from_json(&text).with_context(|| format!("cannot show {}", path.display()))?;
    Ok(match format {
        PlanFormat::Text => {
            super::endpoint_header(&saved, false) + &plan::render_text(&saved, style)
        }
        PlanFormat::Json => plan::to_json(&saved),
        PlanFormat::Markdown => {
            plan::render_markdown(&saved, None, &super::endpoint_header(&saved, true))
        }
    })
}
