//! Lookout devices.
