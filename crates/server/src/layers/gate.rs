//! A tower layer that either lets a request through or answers it at once
//! with a gRPC status. Authentication and authorization are both gates.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// A check made before a request reaches the services.
pub(crate) trait Check: Send + Sync + 'static {
    /// Inspects (and may annotate) the request; an error becomes the response.
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status>;
}

#[derive(Debug)]
pub(crate) struct GateLayer<C> {
    check: Arc<C>,
}

impl<C> Clone for GateLayer<C> {
    fn clone(&self) -> Self {
        Self {
            check: self.check.clone(),
        }
    }
}

impl<C> GateLayer<C> {
    pub(crate) fn new(check: Arc<C>) -> Self {
        Self { check }
    }
}

impl<S, C> Layer<S> for GateLayer<C> {
    type Service = Gate<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            check: self.check.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Gate<S, C> {
    inner: S,
    check: Arc<C>,
}

impl<S: Clone, C> Clone for Gate<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            check: self.check.clone(),
        }
    }
}

impl<S, C> Service<Request<Body>> for Gate<S, C>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Check,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
