//! A controller's static network (cloud-init's network-config), validated with
//! the rest of the inventory so that every command accepts the same inventories.

use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::input::inventory::Controller;

/// A static address for the node (network-config version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub interface: String,
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    pub dns: Vec<IpAddr>,
}

impl Network {
    /// The controller's static network when it gives all of interface, prefix,
    /// gateway and dns; none of them means DHCP; some of them is an error.
    pub fn of(c: &Controller) -> Result<Option<Network>> {
        let given = [
            c.interface.is_some(),
            c.prefix.is_some(),
            c.gateway.is_some(),
            !c.dns.is_empty(),
        ];
        if given.iter().all(|g| !g) {
            return Ok(None);
        }
        if !given.iter().all(|g| *g) {
            return Err(Error::input(
                "a static network needs all of interface, prefix, gateway and dns (or none of them, for DHCP)",
            ));
        }
        let ip = |field: &str, s: &str| -> Result<IpAddr> {
            s.parse().map_err(|_| {
                Error::input(format!(
                    "{field} = {s:?}: not an IP address (e.g. \"10.240.0.1\")"
                ))
            })
        };
        let address = ip("internal_ip", &c.internal_ip)?;
        let gateway = ip("gateway", c.gateway.as_deref().unwrap_or_default())?;
        let dns = c
            .dns
            .iter()
            .enumerate()
            .map(|(j, d)| ip(&format!("dns[{j}]"), d))
            .collect::<Result<Vec<_>>>()?;
        let prefix = c.prefix.unwrap_or_default();
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix == 0 || prefix > max {
            return Err(Error::input(format!(
                "prefix = {prefix}: must be 1 to {max}"
            )));
        }
        let interface = c.interface.clone().unwrap_or_default();
        if interface.is_empty()
            || interface.len() > 15
            || !interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::input(format!(
                "interface = {interface:?}: not a Linux interface name"
            )));
        }
        Ok(Some(Network {
            interface,
            address,
            prefix,
            gateway,
            dns,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_network_needs_every_field() {
        let mut c = Controller {
            name: "controller-1".into(),
            internal_ip: "10.240.0.11".into(),
            interface: None,
            prefix: None,
            gateway: None,
            dns: vec![],
            initial_cluster_state: Default::default(),
        };
        assert_eq!(Network::of(&c).unwrap(), None);
        c.interface = Some("eth0".into());
        assert!(Network::of(&c).unwrap_err().to_string().contains("all of"));
        c.prefix = Some(24);
        c.gateway = Some("10.240.0.1".into());
        c.dns = vec!["10.240.0.2".into(), "10.240.0.3".into()];
        let n = Network::of(&c).unwrap().unwrap();
        assert_eq!(n.prefix, 24);
        assert_eq!(n.dns.len(), 2);
        c.prefix = Some(33);
        assert!(Network::of(&c).is_err());
        c.prefix = Some(24);
        c.interface = Some("eth 0".into());
        assert!(Network::of(&c).is_err());
    }
}
