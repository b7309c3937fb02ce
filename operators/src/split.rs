//! Splitting a collection of `Result`s into an ok and an error collection.

use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use timely::dataflow::operators::core::OkErr;
use timely::progress::Timestamp;

/// Splits a collection of `Result<A, B>` into a collection of `A` and one of `B`.
pub trait SplitResults<'scope, T: Timestamp, A, B, R> {
    /// Routes each `Ok(a)` to the first output and each `Err(b)` to the second,
    /// keeping times and differences. Stateless; one pass, no exchange.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use weft_operators::split::SplitResults;
    ///
    /// timely::example(|scope| {
    ///     let (_input, results) = scope.new_collection_from(vec![Ok::<u32, String>(1), Err("bad".to_string())]);
    ///     let (ok, err) = results.split_results("Split");
    ///     ok.inspect(|x| assert_eq!(x.0, 1));
    ///     err.inspect(|x| assert_eq!(x.0, "bad"));
    /// });
    /// ```
    fn split_results(
        self,
        name: &str,
    ) -> (
        VecCollection<'scope, T, A, R>,
        VecCollection<'scope, T, B, R>,
    );
}

impl<'scope, T, A, B, R> SplitResults<'scope, T, A, B, R>
    for VecCollection<'scope, T, Result<A, B>, R>
where
    T: Timestamp,
    A: Clone + 'static,
    B: Clone + 'static,
    R: Clone + 'static,
{
    fn split_results(
        self,
        _name: &str,
    ) -> (
        VecCollection<'scope, T, A, R>,
        VecCollection<'scope, T, B, R>,
    ) {
        let (ok, err) =
            self.inner
                .ok_err::<Vec<_>, _, Vec<_>, _, _>(|(res, time, diff)| match res {
                    Ok(a) => Ok((a, time, diff)),
                    Err(b) => Err((b, time, diff)),
                });
        (ok.as_collection(), err.as_collection())
    }
}
