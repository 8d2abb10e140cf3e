//! cloud-init
