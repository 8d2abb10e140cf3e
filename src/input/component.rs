//! The control-plane components (and etcd) the inventory can add flags to: one table
//! maps each between its binary (as the unit's ExecStart names it), its unit
//! and its `[<section>.extra_args]` in cluster.toml.

use std::collections::BTreeMap;

use crate::input::inventory::Inventory;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// The binary, as ExecStart runs it (`/usr/local/bin/<binary>`).
    pub binary: &'static str,
    /// The inventory section: `[<section>.extra_args]`.
    pub section: &'static str,
}

pub const COMPONENTS: [Component; 4] = [
    Component {
        binary: "kube-apiserver",
        section: "apiserver",
    },
    Component {
        binary: "kube-controller-manager",
        section: "controller_manager",
    },
    Component {
        binary: "kube-scheduler",
        section: "scheduler",
    },
    // `[etcd.extra_args]`: flags for this node's etcd (checked against the
    // recipe's etcd release).
    Component {
        binary: "etcd",
        section: "etcd",
    },
];

impl Component {
    /// The component an ExecStart command runs, if any.
    pub fn of_command(command: &str) -> Option<Component> {
        let name = command.rsplit('/').next().unwrap_or(command);
        COMPONENTS.into_iter().find(|c| c.binary == name)
    }

    /// How findings and errors name the section: `[apiserver.extra_args]`.
    pub fn extra_args_section(self) -> String {
        format!("[{}.extra_args]", self.section)
    }

    /// The inventory's extra flags for this component.
    pub fn extra_args(self, inv: &Inventory) -> &BTreeMap<String, String> {
        match self.section {
            "apiserver" => &inv.apiserver.extra_args,
            "controller_manager" => &inv.controller_manager.extra_args,
            "etcd" => &inv.etcd.extra_args,
            _ => &inv.scheduler.extra_args,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_their_component() {
        let c = Component::of_command("/usr/local/bin/kube-controller-manager").unwrap();
        assert_eq!(c.section, "controller_manager");
        assert_eq!(c.extra_args_section(), "[controller_manager.extra_args]");
        assert!(Component::of_command("/usr/bin/nginx").is_none());
        assert!(Component::of_command("/usr/local/bin/kube-apiserver-x").is_none());
    }
}
