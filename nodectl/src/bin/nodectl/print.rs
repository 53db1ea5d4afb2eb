//! Lines and JSON for the terminal.

use nodectl::Error;

use crate::args::Output;

/// One JSON line.
pub fn json_line(value: &impl serde::Serialize) -> Result<String, Error> {
    Ok(serde_json::to_string(value)?)
}

/// Indented JSON.
pub fn json_pretty(value: &impl serde::Serialize) -> Result<String, Error> {
    Ok(serde_json::to_string_pretty(value)?)
}

/// One alert as a line: JSON, or time, type, node, transition and message.
pub fn alert_line(alert: &schemas::Alert, output: Output) -> Result<String, Error> {
    if output == Output::Json {
        return json_line(alert);
    }
    let transition = match (&alert.previous_status, &alert.status) {
        (Some(from), Some(to)) => format!("{from} -> {to}"),
        (None, Some(to)) => to.clone(),
        _ => String::new(),
    };
    Ok(format!(
        "{}  {:<26}  {:<24}  {:<22}  {}",
        alert.at,
        alert.r#type,
        alert.node_id.as_deref().unwrap_or("-"),
        transition,
        alert.message.as_deref().unwrap_or("")
    ))
}
