//! Reduction operations for `reduce`, `all_reduce`, `scan`, `reduce_scatter`, ...
//!
//! An operation combines two equal-length slices element by element. Following MPI, it is
//! applied as `inout[i] = input[i] ∘ inout[i]`, where `input` always comes from *lower*
//! ranks than `inout`. Every operation must be associative; one that is not commutative
//! (`commutative()` returns false) is applied in rank order: the result on any rank is
//! `x0 ∘ x1 ∘ ... ∘ x(n-1)`.

use bytemuck::Pod;

/// A reduction operation on slices of `T`.
pub trait Op<T>: Sync {
    /// `inout[i] = input[i] ∘ inout[i]`, where `input` holds the contributions of lower ranks.
    fn combine(&self, input: &[T], inout: &mut [T]);
    /// Whether `a ∘ b == b ∘ a`; if not, the runtime keeps rank order.
    fn commutative(&self) -> bool {
        true
    }
}

/// Plain numbers the built-in operations work on.
pub trait Number: Pod + PartialOrd + Send + Sync {
    /// The neutral element of `add`.
    fn zero() -> Self;
    /// The neutral element of `mul`.
    fn one() -> Self;
    /// `self + o` (wrapping for integers).
    fn add(self, o: Self) -> Self;
    /// `self * o` (wrapping for integers).
    fn mul(self, o: Self) -> Self;
}

/// Integers, for the bitwise operations.
pub trait Integer: Number {
    /// `self & o`.
    fn band(self, o: Self) -> Self;
    /// `self | o`.
    fn bor(self, o: Self) -> Self;
    /// `self ^ o`.
    fn bxor(self, o: Self) -> Self;
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn zero() -> Self { 0 as $t }
            fn one() -> Self { 1 as $t }
            fn add(self, o: Self) -> Self { self + o }
            fn mul(self, o: Self) -> Self { self * o }
        }
    )*};
}
macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn zero() -> Self { 0 }
            fn one() -> Self { 1 }
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
        }
        impl Integer for $t {
            fn band(self, o: Self) -> Self { self & o }
            fn bor(self, o: Self) -> Self { self | o }
            fn bxor(self, o: Self) -> Self { self ^ o }
        }
    )*};
}
numbers!(f32, f64);
integers!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

fn zip<T: Copy>(input: &[T], inout: &mut [T], f: impl Fn(T, T) -> T) {
    for (o, &i) in inout.iter_mut().zip(input) {
        *o = f(i, *o);
    }
}

/// Sum (integers wrap on overflow).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;
/// Product (integers wrap on overflow).
#[derive(Debug, Clone, Copy, Default)]
pub struct Prod;
/// Minimum.
#[derive(Debug, Clone, Copy, Default)]
pub struct Min;
/// Maximum.
#[derive(Debug, Clone, Copy, Default)]
pub struct Max;
/// Logical and: nonzero is true; the result is 1 or 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct LAnd;
/// Logical or: nonzero is true; the result is 1 or 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct LOr;
/// Bitwise and.
#[derive(Debug, Clone, Copy, Default)]
pub struct BAnd;
/// Bitwise or.
#[derive(Debug, Clone, Copy, Default)]
pub struct BOr;
/// Bitwise exclusive or.
#[derive(Debug, Clone, Copy, Default)]
pub struct BXor;

impl<T: Number> Op<T> for Sum {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, T::add)
    }
}
impl<T: Number> Op<T> for Prod {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, T::mul)
    }
}
impl<T: Number> Op<T> for Min {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, |a, b| if b < a { b } else { a })
    }
}
impl<T: Number> Op<T> for Max {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, |a, b| if b > a { b } else { a })
    }
}
fn truth<T: Number>(b: bool) -> T {
    if b {
        T::one()
    } else {
        T::zero()
    }
}
impl<T: Number> Op<T> for LAnd {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, |a, b| truth(a != T::zero() && b != T::zero()))
    }
}
impl<T: Number> Op<T> for LOr {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, |a, b| truth(a != T::zero() || b != T::zero()))
    }
}
impl<T: Integer> Op<T> for BAnd {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, T::band)
    }
}
impl<T: Integer> Op<T> for BOr {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, T::bor)
    }
}
impl<T: Integer> Op<T> for BXor {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, T::bxor)
    }
}

/// A user operation from a closure `f(a, b) -> a ∘ b` applied element-wise, where `a` comes
/// from the lower rank. It must be associative; see [`user`] and [`user_ordered`].
pub struct User<F> {
    f: F,
    commutative: bool,
}

impl<T: Copy, F: Fn(T, T) -> T + Sync> Op<T> for User<F> {
    fn combine(&self, i: &[T], o: &mut [T]) {
        zip(i, o, &self.f)
    }
    fn commutative(&self) -> bool {
        self.commutative
    }
}

/// A commutative, associative user operation (`f(a, b) == f(b, a)`): the runtime may
/// combine contributions in any order.
///
/// ```
/// let world = ranks::init()?;
/// let mut out = [0u32];
/// world.all_reduce_slice(&[world.rank() as u32 + 1], &mut out, &ranks::op::user(|a: u32, b: u32| a.max(b)))?;
/// assert_eq!(out[0], world.size() as u32);
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn user<T, F: Fn(T, T) -> T + Sync>(f: F) -> User<F> {
    User {
        f,
        commutative: true,
    }
}

/// An associative but not commutative user operation: contributions are combined in rank
/// order, `x0 ∘ x1 ∘ ... ∘ x(n-1)` (as MPI does for non-commutative operations).
///
/// ```
/// let world = ranks::init()?;
/// // "The later one wins": associative, not commutative, so rank order matters.
/// let mut out = [0u64];
/// let last = ranks::op::user_ordered(|_a: u64, b: u64| b);
/// world.all_reduce_slice(&[world.rank() as u64], &mut out, &last)?;
/// assert_eq!(out[0], world.size() as u64 - 1);
/// # Ok::<(), ranks::Error>(())
/// ```
pub fn user_ordered<T, F: Fn(T, T) -> T + Sync>(f: F) -> User<F> {
    User {
        f,
        commutative: false,
    }
}

/// Which extreme `min_loc` / `max_loc` look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extreme {
    Min,
    Max,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_combine_elementwise() {
        let mut o = [1i32, 5, 0, 6];
        Op::<i32>::combine(&Sum, &[2, 2, 2, 2], &mut o);
        assert_eq!(o, [3, 7, 2, 8]);
        Op::<i32>::combine(&Min, &[4, 4, 4, 4], &mut o);
        assert_eq!(o, [3, 4, 2, 4]);
        Op::<i32>::combine(&LAnd, &[0, 1, 1, 0], &mut o);
        assert_eq!(o, [0, 1, 1, 0]);
        let mut b = [0b1100u8];
        Op::<u8>::combine(&BXor, &[0b1010], &mut b);
        assert_eq!(b, [0b0110]);
        let mut f = [2.0f64];
        Op::<f64>::combine(&Prod, &[1.5], &mut f);
        assert_eq!(f, [3.0]);
    }

    #[test]
    fn ordered_user_op_keeps_lower_rank_first() {
        // 2x2 matrix product as four numbers is associative and not commutative; use a
        // simpler one: "keep the left" (a ∘ b = a).
        let op = user_ordered(|a: u32, _b: u32| a);
        let mut o = [9u32];
        op.combine(&[1], &mut o);
        assert_eq!(o, [1]);
        assert!(!Op::<u32>::commutative(&op));
    }
}
