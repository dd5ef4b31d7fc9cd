//! The cluster in a build without the `redis` feature: the same names as `cluster.rs`, but a
//! `Cluster` can never exist, so the room's cluster paths compile away.

use crate::event::ClientId;

/// Redis did not answer.
#[derive(Debug, PartialEq)]
pub struct Unreachable;

/// No value of this type exists in this build.
pub enum Cluster {}

impl Cluster {
    pub fn instance(&self) -> &str {
        match *self {}
    }

    pub fn claim(&mut self, _nickname: &str) -> Result<bool, Unreachable> {
        match *self {}
    }

    pub fn release(&mut self, _nickname: &str) -> Result<(), Unreachable> {
        match *self {}
    }

    pub fn publish(&mut self, _line: &str, _joined: Option<ClientId>) -> Result<(), Unreachable> {
        match *self {}
    }
}
