//! `barn image build|list`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use barn_protocol::jobfile::show_size;
use clap::Subcommand;

use crate::dirs::Dirs;
use crate::store::ImageStore;
use crate::store::images::recipe_names;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from its recipe (Debian packages from this machine's apt sources).
    Build {
        /// tiny-x86_64 (kernel + busybox, seconds) or debian-12-x86_64 (build-essential,
        /// about a minute and a half).
        name: String,
        /// Use the recipes in this `images/` folder instead of the ones compiled into barn.
        #[arg(long, value_name = "DIR")]
        recipes: Option<PathBuf>,
        /// Hide the recipe's output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the images on this machine: name, arch, hash, size.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ImageCommand, dirs: &Dirs) -> Result<ExitCode> {
    let store = ImageStore::new(&dirs.data);
    match cmd {
        ImageCommand::Build {
            name,
            recipes,
            quiet,
        } => {
            let img = store.build(&name, recipes.as_deref(), &dirs.data.join("cache"), quiet)?;
            println!(
                "{} {} {} {}",
                img.name,
                img.arch,
                img.hash,
                show_size(img.size)
            );
        }
        ImageCommand::List { json } => {
            let images = store.list()?;
            if json {
                let v: Vec<_> = images
                    .iter()
                    .map(|i| serde_json::json!({"name": i.name, "arch": i.arch, "hash": i.hash.to_string(), "size": i.size}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if images.is_empty() {
                eprintln!(
                    "no images yet; build one with `barn image build NAME` ({})",
                    recipe_names().collect::<Vec<_>>().join(", ")
                );
            } else {
                println!("{:<20} {:<8} {:<70} {:>9}", "NAME", "ARCH", "HASH", "SIZE");
                for i in images {
                    println!(
                        "{:<20} {:<8} {:<70} {:>9}",
                        i.name,
                        i.arch,
                        i.hash.to_string(),
                        show_size(i.size)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
