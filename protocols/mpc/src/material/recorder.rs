//! A [`MaterialSource`] that records what a forward pass takes instead of handing out
//! real material: run the pass against it and the recorded [`MaterialRequest`]s are
//! exactly what the dealer must deal, in order (the planner's view; DESIGN.md section 4).
//! The material it returns has the right shapes and is all zeros (shape records carry
//! the request's shape): never compute with it.

use super::{MaterialError, MaterialRequest, MaterialSource, Request, Src};
use crate::share::Role;
use std::marker::PhantomData;

/// Records requests; returns zero material of the requested shapes.
#[derive(Debug, Default)]
pub struct Recorder<R: Role> {
    requests: Vec<MaterialRequest>,
    _role: PhantomData<R>,
}

impl<R: Role> Recorder<R> {
    /// An empty recording.
    pub fn new() -> Self {
        Recorder { requests: Vec::new(), _role: PhantomData }
    }
    /// The requests so far, in order.
    pub fn requests(&self) -> &[MaterialRequest] {
        &self.requests
    }
    /// Takes the recording.
    pub fn into_requests(self) -> Vec<MaterialRequest> {
        self.requests
    }
}

impl<R: Role> MaterialSource<R> for Recorder<R> {
    fn take<Q: Request<R>>(&mut self, request: Q) -> Result<Q::Output, MaterialError> {
        // Same validation as real material.
        let comps = request.layout()?;
        let me = R::ID as usize;
        let parts = comps
            .iter()
            .enumerate()
            .map(|(i, c)| match c.src[me] {
                Src::Absent => Vec::new(),
                Src::Seed if c.on_demand => vec![0; super::kind::ON_DEMAND_WORDS as usize],
                _ if i == 0 && request.shape_record().is_some() => request.shape_record().unwrap_or_default(),
                _ => vec![0; c.len as usize],
            })
            .collect();
        self.requests.push(request.clone().into());
        request.assemble(parts)
    }
}
