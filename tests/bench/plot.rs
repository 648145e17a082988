//! A line chart of the soak's memory samples as a PNG, drawn without fonts or
//! system libraries: embedded-graphics rasterises lines and its built-in bitmap font
//! into a pixel buffer, and the `png` crate encodes it.

use std::{convert::Infallible, fs::File, io::BufWriter, path::Path};

use embedded_graphics::{
    mono_font::{MonoTextStyle, ascii::FONT_7X13},
    pixelcolor::Rgb888,
    prelude::*,
    primitives::{Line, PrimitiveStyle},
    text::{Alignment, Text},
};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 520;
/// Left, right, top and bottom margins around the plotting area.
const MARGIN: (i32, i32, i32, i32) = (70, 30, 50, 60);
const COLOURS: [Rgb888; 4] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(44, 160, 44),
    Rgb888::new(214, 39, 40),
];
const GRID: Rgb888 = Rgb888::new(225, 225, 225);
const MARK: Rgb888 = Rgb888::new(150, 150, 150);

/// One line of the chart: a name for the legend and (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The axes and what is drawn on them.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
    /// Vertical lines at these x values, each with a label.
    pub marks: Vec<(f64, &'a str)>,
}

impl Chart<'_> {
    /// Draws the chart and writes it to `path` as a PNG.
    pub fn write_png(&self, path: &Path) -> anyhow::Result<()> {
        let mut canvas = Canvas {
            pixels: vec![255; (WIDTH * HEIGHT * 3) as usize],
        };
        self.draw(&mut canvas)
            .unwrap_or_else(|never: Infallible| match never {});
        let mut encoder = png::Encoder::new(BufWriter::new(File::create(path)?), WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header()?.write_image_data(&canvas.pixels)?;
        Ok(())
    }

    fn draw(&self, canvas: &mut Canvas) -> Result<(), Infallible> {
        let points = self.series.iter().flat_map(|series| series.points.iter());
        let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
        let y_max = points.map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let (left, right, top, bottom) = (
            MARGIN.0,
            WIDTH as i32 - MARGIN.1,
            MARGIN.2,
            HEIGHT as i32 - MARGIN.3,
        );
        let at = |x: f64, y: f64| {
            Point::new(
                left + ((x / x_max) * f64::from(right - left)) as i32,
                bottom - ((y / y_max) * f64::from(bottom - top)) as i32,
            )
        };
        let text = MonoTextStyle::new(&FONT_7X13, Rgb888::BLACK);
        let line = |from: Point, to: Point, colour: Rgb888, width: u32| {
            Line::new(from, to).into_styled(PrimitiveStyle::with_stroke(colour, width))
        };

        let (x_step, y_step) = (nice_step(x_max), nice_step(y_max));
        for i in 0..=((x_max / x_step) as u32) {
            let x = f64::from(i) * x_step;
            line(at(x, 0.0), at(x, y_max), GRID, 1).draw(canvas)?;
            let label = round(x, x_step);
            Text::with_alignment(
                &label,
                at(x, 0.0) + Point::new(0, 16),
                text,
                Alignment::Center,
            )
            .draw(canvas)?;
        }
        for i in 0..=((y_max / y_step) as u32) {
            let y = f64::from(i) * y_step;
            line(at(0.0, y), at(x_max, y), GRID, 1).draw(canvas)?;
            let label = round(y, y_step);
            Text::with_alignment(
                &label,
                at(0.0, y) + Point::new(-6, 4),
                text,
                Alignment::Right,
            )
            .draw(canvas)?;
        }
        line(at(0.0, 0.0), at(x_max, 0.0), Rgb888::BLACK, 1).draw(canvas)?;
        line(at(0.0, 0.0), at(0.0, y_max), Rgb888::BLACK, 1).draw(canvas)?;
        for (x, label) in &self.marks {
            line(at(*x, 0.0), at(*x, y_max), MARK, 1).draw(canvas)?;
            Text::new(label, at(*x, y_max) + Point::new(4, 14), text).draw(canvas)?;
        }
        for (series, colour) in self.series.iter().zip(COLOURS.iter().cycle()) {
            for pair in series.points.windows(2) {
                line(
                    at(pair[0].0, pair[0].1),
                    at(pair[1].0, pair[1].1),
                    *colour,
                    2,
                )
                .draw(canvas)?;
            }
        }

        let centre = (left + right) / 2;
        Text::with_alignment(self.title, Point::new(centre, 22), text, Alignment::Center)
            .draw(canvas)?;
        Text::with_alignment(
            self.x_label,
            Point::new(centre, HEIGHT as i32 - 14),
            text,
            Alignment::Center,
        )
        .draw(canvas)?;
        Text::new(self.y_label, Point::new(8, top - 12), text).draw(canvas)?;
        let mut legend = Point::new(right - 150, bottom - 14 * self.series.len() as i32 - 6);
        for (series, colour) in self.series.iter().zip(COLOURS.iter().cycle()) {
            line(
                legend + Point::new(0, -4),
                legend + Point::new(20, -4),
                *colour,
                3,
            )
            .draw(canvas)?;
            Text::new(series.name, legend + Point::new(28, 0), text).draw(canvas)?;
            legend += Point::new(0, 14);
        }
        Ok(())
    }
}

/// A step of 1, 2 or 5 times a power of ten that cuts `range` into 4 to 10 parts.
fn nice_step(range: f64) -> f64 {
    let rough = range / 6.0;
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|step| range / step <= 10.0)
        .unwrap_or(10.0 * power)
}

/// `value` with as many decimals as `step` needs.
fn round(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{value:.decimals$}")
}

/// An RGB pixel buffer that embedded-graphics draws into; pixels outside are dropped.
struct Canvas {
    pixels: Vec<u8>,
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(WIDTH, HEIGHT)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(point, colour) in pixels {
            let (Ok(x), Ok(y)) = (u32::try_from(point.x), u32::try_from(point.y)) else {
                continue;
            };
            if x < WIDTH && y < HEIGHT {
                let at = ((y * WIDTH + x) * 3) as usize;
                self.pixels[at..at + 3].copy_from_slice(&[colour.r(), colour.g(), colour.b()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cut_a_range_into_a_few_round_parts() {
        assert_eq!(nice_step(30.0), 5.0);
        assert_eq!(nice_step(120.0), 20.0);
        assert_eq!(nice_step(26.5), 5.0);
        assert_eq!(nice_step(0.9), 0.1);
    }
}
