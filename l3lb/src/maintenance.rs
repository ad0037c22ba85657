//! Node maintenance: an operator takes a node out of load balancing before working on it, and
//! l3lb withdraws every address from it, so the routers drain it before its pods are evicted.
//! Pure: the decision from this node's Node object and the policy.
use std::fmt;

use crate::cluster::model::{EXCLUDE_LABEL, NodeSpec, UNSCHEDULABLE_TAINT};

/// Why this node announces nothing at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Maintenance {
    /// The Node carries [`EXCLUDE_LABEL`].
    Excluded,
    /// The Node is cordoned, and `--withdraw-on-cordon` says that is enough.
    Cordoned,
}

impl fmt::Display for Maintenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Maintenance::Excluded => write!(f, "the node is labelled {EXCLUDE_LABEL}"),
            Maintenance::Cordoned => write!(
                f,
                "the node is cordoned ({UNSCHEDULABLE_TAINT}) and --withdraw-on-cordon is set"
            ),
        }
    }
}

/// Whether `node` (this node's Node object, if any) withdraws everything. The label always
/// does; a cordon only with `withdraw_on_cordon`, because many clusters cordon for reasons that
/// have nothing to do with traffic (an upgrade of the kubelet, a node that keeps its pods). No
/// Node object (none yet, or a source without Nodes) is no maintenance.
pub fn maintenance(node: Option<&NodeSpec>, withdraw_on_cordon: bool) -> Option<Maintenance> {
    let node = node?;
    if node.excluded {
        Some(Maintenance::Excluded)
    } else if node.cordoned && withdraw_on_cordon {
        Some(Maintenance::Cordoned)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(excluded: bool, cordoned: bool) -> NodeSpec {
        NodeSpec {
            name: "node-a".into(),
            uid: None,
            excluded,
            cordoned,
        }
    }

    #[test]
    fn the_label_always_withdraws_a_cordon_only_when_asked() {
        assert_eq!(maintenance(None, true), None);
        assert_eq!(maintenance(Some(&node(false, false)), true), None);
        assert_eq!(
            maintenance(Some(&node(true, false)), false),
            Some(Maintenance::Excluded)
        );
        assert_eq!(maintenance(Some(&node(false, true)), false), None);
        assert_eq!(
            maintenance(Some(&node(false, true)), true),
            Some(Maintenance::Cordoned)
        );
        assert_eq!(
            maintenance(Some(&node(true, true)), true),
            Some(Maintenance::Excluded),
            "the label is the stronger reason"
        );
    }
}
