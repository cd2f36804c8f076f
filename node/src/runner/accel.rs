//! Choosing the accelerator: KVM only where a canary VM proves it works.
//!
//! `/dev/kvm` existing proves nothing (on our machines nested KVM initialises, then a Linux
//! guest hangs), so the first time a node runs with a given host kernel and QEMU it boots
//! the tiny image under KVM with a one-task job and a short deadline. Success means KVM;
//! anything else means TCG. The verdict is cached in `<data>/accel-canary.toml`.

use std::path::Path;
use std::time::Duration;

use barn_protocol::message::{Accel, JobSpec, Resources, Task};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{RunRequest, Runner};
use crate::store::{Image, ImageStore};

/// How long the canary may take under KVM. A KVM boot takes well under a second.
const CANARY_DEADLINE: Duration = Duration::from_secs(8);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cached {
    host_kernel: String,
    qemu: String,
    kvm: bool,
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The accelerator to use: `forced` if given, else the cached or freshly measured verdict.
pub async fn choose(
    forced: Option<Accel>,
    runner: &Runner,
    images: &ImageStore,
    data_dir: &Path,
) -> Accel {
    if let Some(a) = forced {
        return a;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let cache_path = data_dir.join("accel-canary.toml");
    let qemu = runner.qemu_version(Path::new(&super::qemu::qemu_binary("x86_64")));
    let key = (host_kernel(), qemu.clone());
    if let Ok(text) = std::fs::read_to_string(&cache_path)
        && let Ok(c) = toml::from_str::<Cached>(&text)
        && (c.host_kernel.clone(), c.qemu.clone()) == key
    {
        return if c.kvm { Accel::Kvm } else { Accel::Tcg };
    }
    let Ok(Some(image)) = images.by_name_get("tiny-x86_64") else {
        // No canary image yet: TCG now, and the canary runs once the image exists.
        return Accel::Tcg;
    };
    let kvm = canary(runner, image, data_dir).await;
    info!(kvm, "KVM canary finished");
    let cached = Cached {
        host_kernel: key.0,
        qemu: key.1,
        kvm,
    };
    if let Ok(text) = toml::to_string(&cached) {
        let _ = std::fs::write(&cache_path, text);
    }
    if kvm { Accel::Kvm } else { Accel::Tcg }
}

async fn canary(runner: &Runner, image: Image, data_dir: &Path) -> bool {
    let Ok(dir) = tempfile::Builder::new()
        .prefix("canary-")
        .tempdir_in(data_dir)
    else {
        return false;
    };
    let source = dir.path().join("empty.tar");
    let Ok(file) = std::fs::File::create(&source) else {
        return false;
    };
    let empty = dir.path().join("empty");
    if std::fs::create_dir_all(&empty).is_err()
        || barn_protocol::pack::pack_dir(&empty, file).is_err()
    {
        return false;
    }
    let spec = JobSpec {
        image: image.name.clone(),
        arch: image.arch.clone(),
        tasks: vec![Task {
            name: "canary".into(),
            run: "true".into(),
        }],
        env: Default::default(),
        artifacts: vec![],
        resources: Resources {
            cpus: 1,
            memory_bytes: 128 << 20,
            disk_bytes: 1 << 20,
        },
        timeout_secs: CANARY_DEADLINE.as_secs(),
        replicas: 1,
        source_date_epoch: 0,
        tiebreak: false,
        vary: vec![],
    };
    let req = RunRequest {
        spec,
        source_tar: source,
        image,
        out_dir: dir.path().join("out"),
        variation: Default::default(),
    };
    let cancel = CancellationToken::new();
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let timer = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CANARY_DEADLINE).await;
            cancel.cancel();
        })
    };
    let result = runner.run(req, Accel::Kvm, tx, cancel).await;
    timer.abort();
    matches!(result, Ok(r) if r.status == barn_protocol::message::BuildStatus::Succeeded)
}
