//! Environment variations across replicas, as reprotest varies them on one machine: a job
//! lists dimensions in `vary`, and each replica builds with some of them changed, so that
//! when outputs differ the verdict can say which change split them.
//!
//! Replica 0 builds in the fixed environment; replica k (1 ≤ k ≤ n) varies only the k-th
//! listed dimension; replicas beyond n vary them all.

use std::collections::BTreeMap;

/// The varied value of each dimension (the fixed one is in the guest init and the runner).
fn varied_value(dim: &str, base_cpus: u32, max_cpus: u32) -> Option<String> {
    Some(match dim {
        "build_path" => "/build/barn-varied-path/src".into(),
        "timezone" => "KST-14".into(),
        "locale" => "fr_CH.UTF-8".into(),
        "umask" => "0002".into(),
        "hostname" => "barn-varied".into(),
        // One more CPU where the node allows it, else one fewer: the count changes either way
        // unless the node and the job both allow just one.
        "cpus" if base_cpus < max_cpus => (base_cpus + 1).to_string(),
        "cpus" => base_cpus.saturating_sub(1).max(1).to_string(),
        "file_order" => "reversed".into(),
        _ => return None,
    })
}

/// The guest-side setting each dimension becomes, in the input's `job/vary` file.
fn guest_key(dim: &str) -> Option<&'static str> {
    Some(match dim {
        "build_path" => "BUILD_DIR",
        "timezone" => "TZ",
        "locale" => "LC_ALL",
        "umask" => "UMASK",
        "hostname" => "HOSTNAME",
        _ => return None,
    })
}

/// What one replica varies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variation {
    /// Dimension → the value used instead of the fixed one. Empty: the fixed environment.
    pub applied: BTreeMap<String, String>,
}

impl Variation {
    /// The variation of replica `variant` of a job that varies `vary`.
    /// `max_cpus` is the node's cap: the varied CPU count is recorded as it will really be.
    pub fn for_replica(vary: &[String], variant: u32, base_cpus: u32, max_cpus: u32) -> Self {
        let dims: Vec<&String> = match variant as usize {
            0 => vec![],
            k if k <= vary.len() => vec![&vary[k - 1]],
            _ => vary.iter().collect(),
        };
        let base = base_cpus.min(max_cpus).max(1);
        let applied = dims
            .into_iter()
            .filter_map(|d| Some((d.clone(), varied_value(d, base, max_cpus)?)))
            .collect();
        Self { applied }
    }

    /// The dimensions replica `variant` of a job that varies `vary` changes: the keys of
    /// its result's `variation`, whatever the node's CPU count. A coordinator and a
    /// verifier check a result against its lease with this.
    pub fn dimensions(vary: &[String], variant: u32) -> std::collections::BTreeSet<String> {
        Self::for_replica(vary, variant, 1, 2)
            .applied
            .into_keys()
            .collect()
    }

    /// The `job/vary` file: `KEY=VALUE` lines the guest init applies.
    pub fn guest_file(&self) -> String {
        self.applied
            .iter()
            .filter_map(|(d, v)| Some(format!("{}={v}\n", guest_key(d)?)))
            .collect()
    }

    /// The CPU count, if varied.
    pub fn cpus(&self) -> Option<u32> {
        self.applied.get("cpus").and_then(|v| v.parse().ok())
    }

    /// Whether the source is unpacked in reversed order (so directories list differently).
    pub fn reverse_file_order(&self) -> bool {
        self.applied.contains_key("file_order")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_vary_one_dimension_each_then_all() {
        let vary = vec!["timezone".to_string(), "umask".to_string()];
        assert!(Variation::for_replica(&vary, 0, 1, 4).applied.is_empty());
        assert_eq!(
            Variation::for_replica(&vary, 1, 1, 4).guest_file(),
            "TZ=KST-14\n"
        );
        assert_eq!(
            Variation::for_replica(&vary, 2, 1, 4).guest_file(),
            "UMASK=0002\n"
        );
        assert_eq!(Variation::for_replica(&vary, 3, 1, 4).applied.len(), 2);
        let c = Variation::for_replica(&["cpus".to_string(), "file_order".to_string()], 3, 2, 4);
        assert_eq!(c.cpus(), Some(3));
        assert!(c.reverse_file_order());
        // At the node's cap, the count goes down instead; with one CPU it cannot change.
        assert_eq!(
            Variation::for_replica(&["cpus".to_string()], 1, 4, 2).cpus(),
            Some(1)
        );
        assert_eq!(
            Variation::for_replica(&["cpus".to_string()], 1, 1, 1).cpus(),
            Some(1)
        );
        assert_eq!(c.guest_file(), "");
        // What a verifier expects a replica to have varied: only the dimensions' names.
        let vary = vec![
            "cpus".to_string(),
            "nonsense".to_string(),
            "umask".to_string(),
        ];
        assert!(Variation::dimensions(&vary, 0).is_empty());
        assert_eq!(
            Variation::dimensions(&vary, 1),
            std::collections::BTreeSet::from(["cpus".to_string()])
        );
        assert!(Variation::dimensions(&vary, 2).is_empty());
        assert_eq!(Variation::dimensions(&vary, 4).len(), 2);
    }
}
