//! Load protection: a cap on request message size and on calls in flight,
//! both answered with RESOURCE_EXHAUSTED at once, and the server's deadline
//! for a call, answered with DEADLINE_EXCEEDED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// Refuses request messages larger than the limit with RESOURCE_EXHAUSTED.
///
/// tonic's own decode limit answers OUT_OF_RANGE; gRPC clients expect
/// RESOURCE_EXHAUSTED for an oversized message, so the length prefix of each
/// message is read here first, before tonic decodes (or buffers) anything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageSizeLimitLayer {
    limit: usize,
}

impl MessageSizeLimitLayer {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for MessageSizeLimitLayer {
    type Service = MessageSizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSizeLimit {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MessageSizeLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<Request<Body>> for MessageSizeLimit<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let limit = self.limit;
        self.inner.call(request.map(|body| {
            Body::new(FramedLimit {
                inner: body,
                limit,
                header: [0; 5],
                header_len: 0,
                remaining: 0,
            })
        }))
    }
}

/// Tracks gRPC message framing (1 flag byte, 4 length bytes, payload) across
/// data frames, however the frames happen to be split.
struct FramedLimit {
    inner: Body,
    limit: usize,
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
}

impl FramedLimit {
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes exceeds the limit of {} bytes",
                        self.limit
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl HttpBody for FramedLimit {
    type Data = prost::bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = self.scan(data)
                {
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Caps the calls served at once. Beyond the cap a call is refused with
/// RESOURCE_EXHAUSTED immediately instead of waiting in a queue that grows.
#[derive(Debug, Clone)]
pub(crate) struct ConcurrencyCapLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyCapLayer {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for ConcurrencyCapLayer {
    type Service = ConcurrencyCap<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyCap {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ConcurrencyCap<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Service<Request<Body>> for ConcurrencyCap<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    let response = future.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => Box::pin(std::future::ready(Ok(Status::resource_exhausted(
                "server is at its concurrent call limit; retry later",
            )
            .into_http()))),
        }
    }
}

/// Methods bounded by a deadline of their own, which `server.request_timeout_ms`
/// does not cut: a sandboxed run ends at its policy's `timeout_ms`, which the
/// operator ceiling bounds (`sandbox.max_limits.timeout_ms`), and a run that
/// the server cut short would have taken effect with no answer to show for it.
const SELF_BOUNDED: [&str; 2] = [
    "/cordon.sandbox.v1.Sandbox/Run",
    "/cordon.sandbox.v1.Sandbox/RunStream",
];

/// Answers DEADLINE_EXCEEDED, naming the setting, when a call (the first
/// response of a stream) takes longer than `server.request_timeout_ms`;
/// [`SELF_BOUNDED`] methods are exempt. The client's own `grpc-timeout` is
/// enforced by tonic either way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDeadlineLayer {
    timeout: Duration,
}

impl RequestDeadlineLayer {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestDeadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request<Body>> for RequestDeadline<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let bounded = SELF_BOUNDED.contains(&request.uri().path());
        let future = self.inner.call(request);
        if bounded {
            return Box::pin(future);
        }
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, future).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call took longer than server.request_timeout_ms ({} ms)",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http::{Request, Response};
    use tonic::body::Body;
    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::RequestDeadlineLayer;

    /// A service that answers OK after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    > {
        service_fn(move |_request: Request<Body>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(tonic::Status::ok("").into_http())
        })
    }

    async fn status_of(path: &str, delay: Duration) -> Option<String> {
        let service = RequestDeadlineLayer::new(Duration::from_millis(100)).layer(slow(delay));
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        response
            .headers()
            .get("grpc-status")
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn a_call_past_the_deadline_is_answered_deadline_exceeded() {
        // 4 is DEADLINE_EXCEEDED, 0 is OK.
        let path = "/cordon.identity.v1.Identity/WhoAmI";
        assert_eq!(
            status_of(path, Duration::from_millis(10)).await.as_deref(),
            Some("0")
        );
        assert_eq!(
            status_of(path, Duration::from_millis(400)).await.as_deref(),
            Some("4")
        );
    }

    #[tokio::test]
    async fn sandbox_runs_are_bounded_by_their_own_timeout_instead() {
        for path in [
            "/cordon.sandbox.v1.Sandbox/Run",
            "/cordon.sandbox.v1.Sandbox/RunStream",
        ] {
            assert_eq!(
                status_of(path, Duration::from_millis(400)).await.as_deref(),
                Some("0")
            );
        }
        // A method whose name only starts like a run's is not exempt.
        let lookalike = "/cordon.sandbox.v1.Sandbox/RunX";
        assert_eq!(
            status_of(lookalike, Duration::from_secs(30))
                .await
                .as_deref(),
            Some("4")
        );
    }
}
