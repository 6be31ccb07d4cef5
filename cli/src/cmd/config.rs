//! `config set-context|use-context|get-contexts|current-context|delete-context`.

use super::Ctx;
use crate::args::ConfigCmd;
use crate::config::{config_path, ConfigFile, Context};
use crate::error::{CliError, CliResult};
use crate::output::table;

pub fn run(ctx: &Ctx, cmd: ConfigCmd) -> CliResult<()> {
    let path = config_path()?;
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ConfigCmd::SetContext {
            name,
            url,
            key,
            ca,
            use_it,
        } => {
            let existing = file.contexts.get(&name).cloned();
            let server = url
                .or_else(|| existing.as_ref().map(|c| c.server.clone()))
                .ok_or_else(|| CliError::usage("a new context needs --url"))?;
            let abs = |p: std::path::PathBuf| std::path::absolute(&p).unwrap_or(p);
            let ctx_new = Context {
                server: server.trim_end_matches('/').to_string(),
                key_file: key
                    .map(abs)
                    .or_else(|| existing.as_ref().and_then(|c| c.key_file.clone())),
                ca_file: ca
                    .map(abs)
                    .or_else(|| existing.as_ref().and_then(|c| c.ca_file.clone())),
            };
            file.contexts.insert(name.clone(), ctx_new);
            if use_it || file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            file.save(&path)?;
            ctx.print(&file, || {
                format!("Context {name} saved in {}.\n", path.display())
            })
        }
        ConfigCmd::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(CliError::usage(format!("no context named {name:?}")));
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            ctx.print(&file, || format!("Switched to context {name}.\n"))
        }
        ConfigCmd::GetContexts => ctx.print(&file, || {
            let rows: Vec<Vec<String>> = file
                .contexts
                .iter()
                .map(|(n, c)| {
                    let mark = if file.current_context.as_deref() == Some(n) {
                        "*"
                    } else {
                        ""
                    };
                    vec![
                        mark.to_string(),
                        n.clone(),
                        c.server.clone(),
                        c.key_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                        c.ca_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["CURRENT", "NAME", "SERVER", "KEY FILE", "CA FILE"], &rows)
        }),
        ConfigCmd::CurrentContext => match &file.current_context {
            Some(n) => ctx.print(n, || format!("{n}\n")),
            None => Err(CliError::usage("no current context is set")),
        },
        ConfigCmd::DeleteContext { name } => {
            if file.contexts.remove(&name).is_none() {
                return Err(CliError::usage(format!("no context named {name:?}")));
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            file.save(&path)?;
            ctx.print(&file, || format!("Deleted context {name}.\n"))
        }
    }
}
