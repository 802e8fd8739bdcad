//! Tests of the portable half: policy validation, the ceiling, the manager's choices and the
//! shared supervisor.

mod ceiling;
mod manager;
mod policy;
mod supervise;
