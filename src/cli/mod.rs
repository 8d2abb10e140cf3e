//! The command line: arguments (`args`), their validation into the library's
//! options (`config`), running each command and printing its results
//! (`commands`), progress on stderr (`report`), and what an interrupted
//! run removes before it exits (`signals`).

pub mod args;
pub mod commands;
pub mod config;
pub mod report;
pub mod signals;
