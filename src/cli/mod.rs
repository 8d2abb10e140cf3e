//! The command line: arguments (`args`), their validation into the library's
//! options (`config`), running each command and printing its results
//! (`commands`), and progress on stderr (`report`).

pub mod args;
pub mod commands;
pub mod config;
pub mod report;
