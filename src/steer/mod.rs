//! Steering: plans (CSV files naming SAE latents, coefficients and actions), splicing them into
//! ONNX graphs (the coefficient inputs of sweepable patches are `contract::sweep`).

mod bos;
mod hook_builder;
mod hook_nodes;
pub mod patch;
pub mod plan;
mod position_mask;
mod provenance;
pub mod rules;
pub mod splice;
pub mod steering;

pub use plan::{PlanField, PlanFormat, Pos, RowPositions, SteerAction, SteerRow, SteeringPlan};
pub use rules::{Normalize, PositionRule};
