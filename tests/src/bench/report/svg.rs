//! `benchmarks-pps.svg`: UDP packets per second against the number of services.
use std::fmt::Write as _;

use crate::bench::{
    dataplane::{Mode, Part2},
    stats::fmt_num,
};

/// Packets per second delivered against the number of services (log x), one line per mode,
/// min–max bars.
pub fn svg_pps(p: &Part2) -> String {
    let (width, height) = (820.0, 440.0);
    let (left, right, top, bottom) = (90.0, 250.0, 50.0, 60.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let counts: Vec<u32> = {
        let mut c: Vec<u32> = p.rows.iter().map(|r| r.services).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let (x_lo, x_hi) = (
        (counts.first().copied().unwrap_or(10) as f64)
            .log10()
            .floor(),
        (counts.last().copied().unwrap_or(10_000) as f64)
            .log10()
            .ceil()
            .max(1.0),
    );
    let x_hi = if x_hi <= x_lo { x_lo + 1.0 } else { x_hi };
    // A margin of a fifth of a decade on each side, so no point sits on the frame.
    let (x_min, x_max) = (x_lo - 0.2, x_hi + 0.2);
    let y_max_data = p
        .rows
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.udp_pps.max)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let step = nice_step(y_max_data / 5.0);
    let y_max = (y_max_data / step).ceil() * step;
    let x = |n: f64| left + (n.log10() - x_min) / (x_max - x_min) * plot_w;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">UDP packets/s delivered to the pods vs number of services</text>",
        left + plot_w / 2.0
    );
    // Grid and y ticks.
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 8.0,
            yy + 4.0,
            fmt_si(v)
        );
        v += step;
    }
    // x ticks: every decade.
    let mut decade = x_lo;
    while decade <= x_hi + 1e-9 {
        let n = 10f64.powf(decade);
        let xx = x(n);
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h,
            top + plot_h + 18.0,
            fmt_num(n, 0).replace('\u{202f}', " ")
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">services (log scale)</text>",
        left + plot_w / 2.0,
        height - 18.0
    );
    let _ = writeln!(
        svg,
        "<text transform=\"translate(22 {:.1}) rotate(-90)\" text-anchor=\"middle\">packets per second (median, min–max bars)</text>",
        top + plot_h / 2.0
    );
    // The modes with services, solid; the two references (no service at all), dashed.
    let colors = [
        (Mode::Iptables, "#d62728", ""),
        (Mode::Nftables, "#ff7f0e", ""),
        (Mode::L3lb, "#1f77b4", ""),
        (Mode::L3lbIptables, "#2ca02c", ""),
        (Mode::Direct, "#7f7f7f", " stroke-dasharray=\"6 4\""),
        (Mode::DirectXdp, "#9467bd", " stroke-dasharray=\"2 3\""),
    ];
    for (i, (mode, color, dash)) in colors.iter().enumerate() {
        let rows: Vec<_> = p
            .rows
            .iter()
            .filter(|r| r.mode == *mode && r.error.is_none())
            .collect();
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.services.into()), y(r.udp_pps.median)))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
                points.join(" ")
            );
        }
        for r in &rows {
            let xx = x(r.services.into());
            let _ = writeln!(
                svg,
                "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>\
                 <circle cx=\"{xx:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"/>",
                y(r.udp_pps.min),
                y(r.udp_pps.max),
                y(r.udp_pps.median)
            );
        }
        let ly = top + 20.0 + i as f64 * 22.0;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
             <circle cx=\"{:.1}\" cy=\"{ly:.1}\" r=\"4\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 24.0,
            lx + 12.0,
            lx + 32.0,
            ly + 4.0,
            mode.short_label()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.max(1e-9).log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn fmt_si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
