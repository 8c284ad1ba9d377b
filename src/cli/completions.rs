//! `berth completions <shell>`: the shell's completion script, from the CLI definitions.

use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
#[command(after_help = "Install, e.g.:\n  \
    berth completions bash > /etc/bash_completion.d/berth\n  \
    berth completions zsh > \"${fpath[1]}/_berth\"\n  \
    berth completions fish > ~/.config/fish/completions/berth.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn print(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}
