//! Morning sync: CSV files delivered by SFTP into an inbox, ingested into the
//! same mirror tables the live sync writes.

pub mod cli;
pub mod inbox;
pub mod load;
pub mod names;
pub mod reader;
