//! Steering: plans (CSV files naming SAE latents, coefficients and actions), splicing them into
//! ONNX graphs (the coefficient inputs of sweepable patches are `contract::sweep`).

pub mod patch;
pub mod plan;
pub mod splice;

pub use plan::{PlanField, PlanFormat, Pos, RowPositions, SteerAction, SteerRow, SteeringPlan};
