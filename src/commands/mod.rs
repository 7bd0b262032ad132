//! The one-off commands beside the cycle driver (`experiment`): each a thin experiment of its
//! own on the same truth, observations and methods.
//! - `smooth` (`genda smooth`): SDA over one whole window, against a particle-filter reference;
//! - `cg` (`genda cg`): the closed-form conditional-Gaussian posterior twin;
//! - `couple` (`genda couple`): assimilation for an external model through NetCDF files;
//! - `posterior` (`genda posterior`): one analysis against a reference posterior sample.
pub mod cg;
pub mod couple;
pub mod posterior;
pub mod smooth;
