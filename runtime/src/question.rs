//! What a question asks: its kind (is there / how many / where / what does it say / what is it / describe /
//! other) and the detector labels its everyday words name ("anyone" → person, "vehicles" → car, bus, truck, ...).

use serde::Serialize;

/// The kinds of question the scene can answer in different ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// "Is there a dog?", "Do you see anyone?", "Any cars?"
    Exists,
    /// "How many people are there?"
    Count,
    /// "Where is the cat?"
    Where,
    /// "What does the sign say?", "Read the text."
    ReadText,
    /// "What animal is this?", "What kind of vehicle is it?"
    Identify,
    /// "What do you see?", "Describe the scene."
    Describe,
    /// Anything else, such as a yes/no question about something the detector cannot report ("Is the door open?").
    Other,
}

/// A question as understood: its kind and what it names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    pub kind: Kind,
    /// What the question names, in the order it names them, each with the detector labels it stands for.
    pub subjects: Vec<Subject>,
}

/// One thing a question names: the words used ("vehicles") and the detector labels they cover.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subject {
    pub words: String,
    pub labels: Vec<String>,
    /// How an answer names several of it: the group's word ("animals") or the label's plural ("sports balls").
    pub plural: String,
    /// Named as a group ("animals", "vehicles"), so an answer lists what of the group is there.
    pub group: bool,
}

/// Words any sentence about a photo may use without claiming anything: function words, the photo itself, seeing,
/// and the words of a plain "I can't tell".
pub const FUNCTION_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "there",
    "here",
    "it",
    "its",
    "they",
    "them",
    "their",
    "i",
    "you",
    "we",
    "me",
    "my",
    "your",
    "our",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "has",
    "have",
    "had",
    "do",
    "does",
    "did",
    "can",
    "could",
    "will",
    "would",
    "should",
    "may",
    "might",
    "not",
    "no",
    "yes",
    "nor",
    "and",
    "or",
    "but",
    "so",
    "if",
    "than",
    "as",
    "of",
    "in",
    "on",
    "at",
    "to",
    "from",
    "by",
    "with",
    "for",
    "into",
    "onto",
    "over",
    "under",
    "above",
    "below",
    "near",
    "next",
    "beside",
    "behind",
    "between",
    "among",
    "around",
    "up",
    "down",
    "out",
    "all",
    "some",
    "any",
    "each",
    "every",
    "both",
    "either",
    "neither",
    "several",
    "only",
    "just",
    "also",
    "too",
    "what",
    "which",
    "who",
    "where",
    "how",
    "s",
    "t",
    "don",
    "doesn",
    "isn",
    "aren",
    "cannot",
    "photo",
    "photos",
    "image",
    "images",
    "picture",
    "pictures",
    "scene",
    "frame",
    "view",
    "camera",
    "see",
    "sees",
    "seen",
    "show",
    "shows",
    "showing",
    "shown",
    "appear",
    "appears",
    "visible",
    "contains",
    "contain",
    "containing",
    "include",
    "includes",
    "including",
    "tell",
    "sure",
    "know",
    "total",
    "altogether",
    "none",
    "nothing",
    "anything",
    "something",
];

/// Where things are, as the facts say it.
pub const POSITION_WORDS: &[&str] = &[
    "left",
    "right",
    "middle",
    "center",
    "centre",
    "top",
    "bottom",
    "front",
    "background",
    "foreground",
    "side",
    "sides",
    "corner",
    "across",
    "upper",
    "lower",
    "half",
];

/// Words that leave a yes/no question one of existence ("is anyone there?", "do you see a dog?").
const EXISTENCE_WORDS: &[&str] = &[
    "exist",
    "exists",
    "present",
    "visible",
    "any",
    "anyone",
    "anybody",
    "someone",
    "somebody",
    "anything",
    "something",
    "outside",
    "inside",
    "outdoors",
    "indoors",
    "around",
    "here",
    "there",
];

/// Words after which the rest of a question says where ("in the water", "on the beach"), not what.
const PLACE_PREPOSITIONS: &[&str] =
    &["in", "on", "at", "near", "by", "under", "behind", "beside", "next", "outside", "inside", "around", "across"];

/// Everyday words for one COCO label, beside the label itself and its plural.
fn label_synonyms(label: &str) -> &'static [&'static str] {
    match label {
        "person" => &[
            "people",
            "persons",
            "anyone",
            "anybody",
            "someone",
            "somebody",
            "man",
            "men",
            "woman",
            "women",
            "child",
            "children",
            "kid",
            "kids",
            "boy",
            "boys",
            "girl",
            "girls",
            "human",
            "humans",
            "pedestrian",
            "pedestrians",
            "guy",
            "guys",
            "lady",
            "ladies",
            "baby",
            "babies",
            "adult",
            "adults",
            "player",
            "players",
        ],
        "sports ball" => &["ball", "balls", "football", "footballs", "soccer ball", "basketball", "baseball"],
        "cell phone" => &["phone", "phones", "smartphone", "smartphones", "mobile phone", "mobile"],
        "tv" => &["television", "televisions", "tvs", "telly"],
        "laptop" => &["computer", "computers", "notebook computer"],
        "couch" => &["sofa", "sofas", "settee"],
        "motorcycle" => &["motorbike", "motorbikes", "scooter", "scooters"],
        "airplane" => &["plane", "planes", "aircraft", "aeroplane", "aeroplanes", "jet", "jets"],
        "bicycle" => &["bike", "bikes", "cycle", "cycles"],
        "car" => &["cars", "automobile", "automobiles"],
        "cup" => &["mug", "mugs"],
        "dining table" => &["table", "tables"],
        "potted plant" => &["plant", "plants", "houseplant", "houseplants"],
        "refrigerator" => &["fridge", "fridges"],
        "fire hydrant" => &["hydrant", "hydrants"],
        "handbag" => &["purse", "purses", "bag", "bags"],
        "backpack" => &["rucksack", "rucksacks"],
        "wine glass" => &["glass", "glasses"],
        "boat" => &["ship", "ships"],
        "cow" => &["cattle"],
        "mouse" => &["computer mouse"],
        "remote" => &["remote control", "remote controls"],
        _ => &[],
    }
}

/// Groups of labels: how an answer names several of the group, the words that name it, its members.
const GROUPS: [(&str, &[&str], &[&str]); 3] = [
    (
        "animals",
        &["animal", "animals", "pet", "pets", "creature", "creatures", "wildlife"],
        &["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
    ),
    (
        "vehicles",
        &["vehicle", "vehicles", "traffic"],
        &["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"],
    ),
    (
        "things to eat",
        &["food", "fruit", "fruits"],
        &["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"],
    ),
];

/// The English plural of a label ("person" → "people", "bus" → "buses").
pub fn plural(label: &str) -> String {
    lookout_models::vision::scene::plural(label)
}

/// Lowercase words of `text` (letters and digits), for whole-word matching.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// Positions in `words` where `phrase` (one or more words) starts.
pub fn find_phrase(words: &[String], phrase: &str) -> Vec<usize> {
    let target: Vec<String> = phrase.split(' ').map(str::to_lowercase).collect();
    if target.is_empty() || words.len() < target.len() {
        return Vec::new();
    }
    (0..=words.len() - target.len()).filter(|i| words[*i..*i + target.len()] == target[..]).collect()
}

/// The ways a sentence can name `label`: the label, its plural, its everyday words.
pub fn names_of(label: &str) -> Vec<String> {
    let mut names = vec![label.to_string(), plural(label)];
    names.extend(label_synonyms(label).iter().map(|s| s.to_string()));
    names
}

/// Group words, the group's plural and the labels it covers among `known` labels.
fn groups(known: &[String]) -> impl Iterator<Item = (&'static str, &'static str, Vec<String>)> + '_ {
    GROUPS.iter().flat_map(move |(plural, names, members)| {
        let labels: Vec<String> =
            members.iter().filter(|m| known.iter().any(|k| k == *m)).map(|m| m.to_string()).collect();
        names.iter().map(move |name| (*name, *plural, labels.clone()))
    })
}

/// Group words and the labels they cover, among `known` labels.
pub fn group_words(known: &[String]) -> impl Iterator<Item = (&'static str, Vec<String>)> + '_ {
    groups(known).map(|(name, _, labels)| (name, labels))
}

impl Kind {
    /// The kind in a few words, for explanations ("how many").
    pub fn phrase(self) -> &'static str {
        match self {
            Kind::Exists => "is-there",
            Kind::Count => "how-many",
            Kind::Where => "where",
            Kind::ReadText => "what-does-it-say",
            Kind::Identify => "what-is-it",
            Kind::Describe => "describe",
            Kind::Other => "other",
        }
    }
}

impl Question {
    /// Reads `text` against the labels the detector knows.
    pub fn parse(text: &str, known: &[String]) -> Question {
        let w = words(text);
        let found = subjects(&w, known);
        let named_second = found.first().is_some_and(|(at, _)| *at == 1); // "what animal ...", "which cars ..."
        let mut named = vec![false; w.len()];
        for (at, subject) in &found {
            named[*at..*at + subject.words.split(' ').count()].iter_mut().for_each(|n| *n = true);
        }
        // Words that ask something of what is named ("sleeping", "red", "open"): before any place phrase, neither
        // named nor a function, position or existence word.
        let before_place = w.iter().position(|x| PLACE_PREPOSITIONS.contains(&x.as_str())).unwrap_or(w.len());
        let predicate = (0..before_place).any(|i| {
            let x = w[i].as_str();
            !named[i]
                && !FUNCTION_WORDS.contains(&x)
                && !POSITION_WORDS.contains(&x)
                && !EXISTENCE_WORDS.contains(&x)
                && number_value(x).is_none()
        });
        let counted =
            w.iter().any(|x| number_value(x).is_some() && !matches!(x.as_str(), "a" | "an" | "no" | "single"));
        let kind = kind_of(&w, !found.is_empty(), named_second, predicate, counted);
        Question { kind, subjects: found.into_iter().map(|(_, s)| s).collect() }
    }

    /// Every label the question names, directly or through a group.
    pub fn labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        for label in self.subjects.iter().flat_map(|s| s.labels.iter()) {
            if !labels.contains(&label.as_str()) {
                labels.push(label);
            }
        }
        labels
    }
}

/// The things `w` names, longest phrases first so "hot dog" is not also a dog, in the order they appear, with the
/// word each starts at.
fn subjects(w: &[String], known: &[String]) -> Vec<(usize, Subject)> {
    let mut candidates: Vec<(String, Vec<String>, String, bool)> = Vec::new();
    for label in known {
        for name in names_of(label) {
            candidates.push((name, vec![label.clone()], plural(label), false));
        }
    }
    for (name, group_plural, labels) in groups(known) {
        if !labels.is_empty() {
            candidates.push((name.to_string(), labels, group_plural.to_string(), true));
        }
    }
    candidates.sort_by_key(|(name, ..)| std::cmp::Reverse(name.split(' ').count()));
    let mut taken = vec![false; w.len()];
    let mut found: Vec<(usize, Subject)> = Vec::new();
    for (name, labels, plural, group) in candidates {
        let span = name.split(' ').count();
        for at in find_phrase(w, &name) {
            if taken[at..at + span].iter().any(|t| *t) {
                continue;
            }
            taken[at..at + span].iter_mut().for_each(|t| *t = true);
            if !found.iter().any(|(_, s)| s.labels == labels) {
                found
                    .push((at, Subject { words: name.clone(), labels: labels.clone(), plural: plural.clone(), group }));
            }
        }
    }
    found.sort_by_key(|(at, _)| *at);
    found
}

const NUMBER_WORDS: [&str; 13] =
    ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"];

/// The number a word says ("8", "eight", "a", "pair"), if any.
pub fn number_value(word: &str) -> Option<usize> {
    word.parse().ok().or_else(|| NUMBER_WORDS.iter().position(|w| *w == word)).or(match word {
        "a" | "an" | "single" => Some(1),
        "pair" | "couple" => Some(2),
        "trio" => Some(3),
        _ => None,
    })
}

fn kind_of(w: &[String], names_something: bool, named_second: bool, predicate: bool, counted: bool) -> Kind {
    let has = |phrase: &str| !find_phrase(w, phrase).is_empty();
    let first = w.first().map(String::as_str).unwrap_or("");
    if has("how many") || has("number of") || (first == "count") {
        return Kind::Count;
    }
    let about_text =
        w.iter().any(|x| ["say", "says", "read", "written", "writing", "text", "sign", "words"].contains(&x.as_str()));
    if first == "read" || (matches!(first, "what" | "which") && about_text) {
        return Kind::ReadText;
    }
    if first == "where" || has("where is") || has("where are") {
        return Kind::Where;
    }
    let yes_no = matches!(
        first,
        "is" | "are"
            | "was"
            | "were"
            | "do"
            | "does"
            | "did"
            | "can"
            | "could"
            | "has"
            | "have"
            | "any"
            | "anything"
            | "anyone"
            | "anybody"
            | "someone"
    );
    if names_something && (yes_no || has("is there") || has("are there")) && !predicate {
        // "Are there two dogs?" is answered with the count.
        return if counted { Kind::Count } else { Kind::Exists };
    }
    if has("what do you see")
        || has("what can you see")
        || has("what is in")
        || has("what s in")
        || has("what is there")
        || has("what s there")
        || first == "describe"
        || has("tell me what")
        || has("what is happening")
        || has("what s happening")
    {
        return Kind::Describe;
    }
    let what_it_is = has("what is this")
        || has("what is that")
        || has("what is it")
        || has("what are these")
        || has("what are those");
    if matches!(first, "what" | "which")
        && (has("kind of") || has("type of") || has("sort of") || named_second || what_it_is)
    {
        return Kind::Identify;
    }
    Kind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "person",
            "bicycle",
            "car",
            "dog",
            "cat",
            "horse",
            "bird",
            "truck",
            "bus",
            "sports ball",
            "hot dog",
            "cell phone",
            "tv",
            "laptop",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn parse(q: &str) -> Question {
        Question::parse(q, &known())
    }

    #[test]
    fn kinds_are_read_from_the_wording() {
        let cases = [
            ("Is there a ball?", Kind::Exists),
            ("Do you see anyone?", Kind::Exists),
            ("Are there any vehicles?", Kind::Exists),
            ("Any dogs?", Kind::Exists),
            ("How many people are outside?", Kind::Count),
            ("Count the cars.", Kind::Count),
            ("Where is the cat?", Kind::Where),
            ("What does the sign say?", Kind::ReadText),
            ("Read the text.", Kind::ReadText),
            ("What is written on the page?", Kind::ReadText),
            ("What animal is this?", Kind::Identify),
            ("What kind of vehicle is it?", Kind::Identify),
            ("Which animals do you see?", Kind::Identify),
            ("What is the dog doing?", Kind::Other),
            ("What do you see?", Kind::Describe),
            ("Describe the scene.", Kind::Describe),
            ("Is the door open?", Kind::Other),
            ("Is the dog sleeping?", Kind::Other),
            ("Is there a red car?", Kind::Other),
            ("Is anyone on the beach?", Kind::Exists),
            ("Can you see anyone in the water?", Kind::Exists),
            ("Are there two dogs?", Kind::Count),
            ("Why is the sky blue?", Kind::Other),
        ];
        for (q, kind) in cases {
            assert_eq!(parse(q).kind, kind, "{q}");
        }
    }

    #[test]
    fn everyday_words_map_to_labels() {
        assert_eq!(parse("Is there a ball?").labels(), ["sports ball"]);
        assert_eq!(parse("Is anyone there?").labels(), ["person"]);
        assert_eq!(parse("How many women and children?").labels(), ["person"]);
        assert_eq!(parse("Is there a phone or a television?").labels(), ["cell phone", "tv"]);
        assert_eq!(parse("Any vehicles?").labels(), ["bicycle", "car", "bus", "truck"]);
        assert!(parse("Any vehicles?").subjects[0].group);
        assert_eq!(parse("Is there a hot dog?").labels(), ["hot dog"], "a hot dog is not a dog");
        assert_eq!(parse("How many dogs and hot dogs?").labels(), ["dog", "hot dog"]);
        assert!(parse("Is the door open?").labels().is_empty());
    }
}
