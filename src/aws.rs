//! AWS integration (placeholder until the Cloud Map / App Mesh modules land).

use crate::config::Config;
use crate::gateway::Dependencies;

/// Builds the AWS-backed dependencies the config asks for.
pub async fn fill_dependencies(_config: &Config, _deps: &mut Dependencies) -> Result<(), String> {
    Ok(())
}
